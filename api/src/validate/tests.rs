use super::*;

fn base() -> CompiledConfig {
    let mut config = CompiledConfig::empty(1);
    config.backends.push(Backend {
        name: "default/web:80".into(),
        protocol: BackendProtocol::Http1,
        endpoints: vec!["127.0.0.1:8080".parse().unwrap()],
        tls: None,
    });
    config.ports.push(Port {
        port: 8080,
        protocol: PortProtocol::Http,
        client_validation: None,
        session_resumption_disabled: false,
        listeners: vec![Listener {
            name: "http".into(),
            hostname: None,
            certificates: vec![],
            routes: vec![HttpRoute {
                name: "default/web".into(),
                hostnames: vec!["example.com".into(), "*.example.org".into()],
                rules: vec![RouteRule {
                    matches: vec![RouteMatch {
                        path: PathMatch::PathPrefix("/api".into()),
                        headers: vec![HeaderMatch {
                            name: "x-version".into(),
                            value: StringMatch::RegularExpression("v[0-9]+".into()),
                        }],
                        query_params: vec![],
                        method: Some("GET".into()),
                    }],
                    filters: vec![Filter::UrlRewrite(UrlRewrite {
                        hostname: None,
                        path: Some(PathModifier::ReplacePrefixMatch("/".into())),
                    })],
                    backends: vec![WeightedBackend {
                        weight: 1,
                        target: BackendTarget::Backend("default/web:80".into()),
                        filters: vec![],
                    }],
                    ..Default::default()
                }],
            }],
            passthrough: false,
            stream_routes: vec![],
        }],
    });
    config
}

/// `base` with its port turned into a TLS passthrough port carrying one TLS route.
fn tls_base() -> CompiledConfig {
    let mut config = base();
    config.ports[0].protocol = PortProtocol::Tls;
    let listener = &mut config.ports[0].listeners[0];
    listener.routes.clear();
    listener.passthrough = true;
    listener.stream_routes = vec![StreamRoute {
        name: "default/db".into(),
        hostnames: vec!["db.example.com".into()],
        backends: vec![WeightedBackend {
            weight: 1,
            target: BackendTarget::Backend("default/web:80".into()),
            filters: vec![],
        }],
    }];
    config
}

#[test]
fn tls_base_is_valid() {
    assert_eq!(validate(&tls_base()), Ok(()));
    let mut tcp = tls_base();
    tcp.ports[0].protocol = PortProtocol::Tcp;
    tcp.ports[0].listeners[0].passthrough = false;
    tcp.ports[0].listeners[0].stream_routes[0].hostnames.clear();
    assert_eq!(validate(&tcp), Ok(()));
    let mut udp = tcp.clone();
    udp.ports[0].protocol = PortProtocol::Udp;
    assert_eq!(validate(&udp), Ok(()));
    // One port number, once over TCP and once over UDP (DNS), is two ports; twice over UDP is
    // one port listed twice.
    let mut both = tcp;
    let mut udp_port = udp.ports[0].clone();
    udp_port.listeners[0].name = "udp".into();
    both.ports.push(udp_port.clone());
    assert_eq!(validate(&both), Ok(()));
    udp_port.listeners[0].name = "udp-again".into();
    both.ports.push(udp_port);
    let error = validate(&both).unwrap_err();
    assert_eq!(error.path, "ports[2]");
    assert!(error.message.contains("twice"), "{error}");
}

#[test]
fn invalid_tls_ports_are_reported_with_their_path() {
    type Breaker = fn(&mut CompiledConfig);
    let cases: Vec<(&str, Breaker, &str)> = vec![
        (
            "HTTP route on a TLS port",
            |c| c.ports[0].listeners[0].routes = base().ports[0].listeners[0].routes.clone(),
            "ports[0].listeners[0]",
        ),
        (
            "passthrough with a certificate",
            |c| c.ports[0].listeners[0].certificates = vec!["x".into()],
            "ports[0].listeners[0]",
        ),
        (
            "termination without a certificate",
            |c| c.ports[0].listeners[0].passthrough = false,
            "ports[0].listeners[0]",
        ),
        (
            "TLS route on an HTTP port",
            |c| c.ports[0].protocol = PortProtocol::Http,
            "ports[0].listeners[0]",
        ),
        (
            "unknown backend",
            |c| {
                c.ports[0].listeners[0].stream_routes[0].backends[0].target =
                    BackendTarget::Backend("nope".into())
            },
            "ports[0].listeners[0].stream_routes[0].backends[0]",
        ),
        (
            "HTTP filter on a TLS backend",
            |c| {
                c.ports[0].listeners[0].stream_routes[0].backends[0].filters =
                    vec![Filter::RequestHeaderModifier(HeaderModifier::default())]
            },
            "ports[0].listeners[0].stream_routes[0].backends[0]",
        ),
        (
            "bad TLS route hostname",
            |c| c.ports[0].listeners[0].stream_routes[0].hostnames[0] = "a b".into(),
            "ports[0].listeners[0].stream_routes[0].hostnames[0]",
        ),
        (
            "hostname on a TCP listener",
            |c| {
                c.ports[0].protocol = PortProtocol::Tcp;
                c.ports[0].listeners[0].passthrough = false;
                c.ports[0].listeners[0].stream_routes[0].hostnames.clear();
                c.ports[0].listeners[0].hostname = Some("db.example.com".into());
            },
            "ports[0].listeners[0]",
        ),
        (
            "hostnames on a TCP route",
            |c| {
                c.ports[0].protocol = PortProtocol::Tcp;
                c.ports[0].listeners[0].passthrough = false;
            },
            "ports[0].listeners[0]",
        ),
        (
            "hostnames on a UDP route",
            |c| {
                c.ports[0].protocol = PortProtocol::Udp;
                c.ports[0].listeners[0].passthrough = false;
            },
            "ports[0].listeners[0]",
        ),
        (
            "certificate on a UDP listener",
            |c| {
                c.ports[0].protocol = PortProtocol::Udp;
                c.ports[0].listeners[0].passthrough = false;
                c.ports[0].listeners[0].stream_routes[0].hostnames.clear();
                c.ports[0].listeners[0].certificates = vec!["x".into()];
            },
            "ports[0].listeners[0]",
        ),
        (
            "two listeners on a UDP port",
            |c| {
                c.ports[0].protocol = PortProtocol::Udp;
                c.ports[0].listeners[0].passthrough = false;
                c.ports[0].listeners[0].stream_routes[0].hostnames.clear();
                let mut second = c.ports[0].listeners[0].clone();
                second.name = "second".into();
                c.ports[0].listeners.push(second);
            },
            "ports[0]",
        ),
        (
            "two listeners on a TCP port",
            |c| {
                c.ports[0].protocol = PortProtocol::Tcp;
                c.ports[0].listeners[0].passthrough = false;
                c.ports[0].listeners[0].stream_routes[0].hostnames.clear();
                let mut second = c.ports[0].listeners[0].clone();
                second.name = "second".into();
                second.hostname = Some("x.example.com".into());
                c.ports[0].listeners.push(second);
            },
            "ports[0]",
        ),
    ];
    for (name, breaker, path) in cases {
        let mut config = tls_base();
        breaker(&mut config);
        let error = validate(&config).expect_err(name);
        assert_eq!(error.path, path, "{name}: {error}");
    }
}

#[test]
fn configs_without_stream_routes_serialize_without_the_new_fields() {
    let json = serde_json::to_string(&base()).unwrap();
    assert!(
        !json.contains("passthrough") && !json.contains("stream_routes"),
        "{json}"
    );
    let json = serde_json::to_string(&tls_base()).unwrap();
    assert!(
        json.contains("\"passthrough\":true") && json.contains("stream_routes"),
        "{json}"
    );
}

fn cors(edit: fn(&mut Cors)) -> Filter {
    let mut filter = Cors {
        allow_origins: vec!["https://*.example.com".into()],
        allow_methods: vec!["GET".into()],
        allow_headers: vec!["*".into()],
        expose_headers: vec![],
        allow_credentials: true,
        max_age_seconds: DEFAULT_CORS_MAX_AGE_SECONDS,
    };
    edit(&mut filter);
    Filter::Cors(filter)
}

fn mirror(backend: &str, numerator: u32, denominator: u32) -> Filter {
    Filter::RequestMirror(RequestMirror {
        backend: backend.into(),
        numerator,
        denominator,
    })
}

#[test]
fn cors_and_mirror_filters_validate() {
    let mut config = base();
    rule(&mut config).filters = vec![
        cors(|_| {}),
        mirror("default/web:80", 20, 100),
        mirror("default/web:80", 0, 1),
    ];
    assert_eq!(validate(&config), Ok(()));
}

fn retry(codes: &[u16], attempts: u32, backoff_ms: u64) -> RetryPolicy {
    RetryPolicy {
        codes: codes.to_vec(),
        attempts,
        backoff_ms,
    }
}

fn rule(config: &mut CompiledConfig) -> &mut RouteRule {
    &mut config.ports[0].listeners[0].routes[0].rules[0]
}

#[test]
fn base_is_valid() {
    assert_eq!(validate(&base()), Ok(()));
    let mut config = base();
    rule(&mut config).retry = Some(retry(&[500, 503], MAX_RETRY_ATTEMPTS, MAX_RETRY_BACKOFF_MS));
    assert_eq!(validate(&config), Ok(()));
}

/// Each case breaks one invariant; the error must name where.
#[test]
fn invalid_configs_are_reported_with_their_path() {
    type Breaker = fn(&mut CompiledConfig);
    let cases: Vec<(&str, Breaker, &str)> = vec![
        ("schema", |c| c.schema_version = 99, "schema_version"),
        ("port zero", |c| c.ports[0].port = 0, "ports[0]"),
        (
            "duplicate port",
            |c| {
                let mut p = c.ports[0].clone();
                p.listeners[0].name = "other".into();
                c.ports.push(p)
            },
            "ports[1]",
        ),
        (
            "https without certificate",
            |c| c.ports[0].protocol = PortProtocol::Https,
            "ports[0].listeners[0]",
        ),
        (
            "unknown certificate",
            |c| {
                c.ports[0].protocol = PortProtocol::Https;
                c.ports[0].listeners[0].certificates = vec!["nope".into()];
            },
            "ports[0].listeners[0].certificates[0]",
        ),
        (
            "bad listener hostname",
            |c| c.ports[0].listeners[0].hostname = Some("bad host".into()),
            "ports[0].listeners[0].hostname",
        ),
        (
            "two listeners with one hostname",
            |c| {
                let mut l = c.ports[0].listeners[0].clone();
                l.name = "second".into();
                c.ports[0].listeners.push(l);
            },
            "ports[0].listeners[1]",
        ),
        (
            "bad route hostname",
            |c| c.ports[0].listeners[0].routes[0].hostnames[0] = "*".into(),
            "ports[0].listeners[0].routes[0].hostnames[0]",
        ),
        (
            "relative path",
            |c| rule(c).matches[0].path = PathMatch::Exact("api".into()),
            "ports[0].listeners[0].routes[0].rules[0].matches[0].path",
        ),
        (
            "bad regex",
            |c| rule(c).matches[0].path = PathMatch::RegularExpression("(".into()),
            "ports[0].listeners[0].routes[0].rules[0].matches[0].path",
        ),
        (
            "empty gRPC method",
            |c| rule(c).matches[0].path = PathMatch::GrpcMethod(String::new()),
            "ports[0].listeners[0].routes[0].rules[0].matches[0].path",
        ),
        (
            "gRPC method holding a path",
            |c| rule(c).matches[0].path = PathMatch::GrpcMethod("Svc/Get".into()),
            "ports[0].listeners[0].routes[0].rules[0].matches[0].path",
        ),
        (
            "bad header name",
            |c| rule(c).matches[0].headers[0].name = "x version".into(),
            "ports[0].listeners[0].routes[0].rules[0].matches[0].headers[0]",
        ),
        (
            "bad method",
            |c| rule(c).matches[0].method = Some("GE T".into()),
            "ports[0].listeners[0].routes[0].rules[0].matches[0].method",
        ),
        (
            "prefix rewrite on exact match",
            |c| rule(c).matches[0].path = PathMatch::Exact("/api".into()),
            "ports[0].listeners[0].routes[0].rules[0].filters[0]",
        ),
        (
            "header value with newline",
            |c| {
                rule(c).filters = vec![Filter::RequestHeaderModifier(HeaderModifier {
                    set: vec![HeaderValue {
                        name: "x-a".into(),
                        value: "a\r\nInjected: yes".into(),
                    }],
                    ..Default::default()
                })]
            },
            "ports[0].listeners[0].routes[0].rules[0].filters[0].set[0]",
        ),
        (
            "redirect status",
            |c| {
                rule(c).filters = vec![Filter::RequestRedirect(RequestRedirect {
                    scheme: None,
                    hostname: None,
                    port: None,
                    path: None,
                    status_code: 200,
                })]
            },
            "ports[0].listeners[0].routes[0].rules[0].filters[0]",
        ),
        (
            "redirect and rewrite",
            |c| {
                rule(c)
                    .filters
                    .push(Filter::RequestRedirect(RequestRedirect {
                        scheme: Some("https".into()),
                        hostname: None,
                        port: None,
                        path: None,
                        status_code: 301,
                    }))
            },
            "ports[0].listeners[0].routes[0].rules[0].filters",
        ),
        (
            "unknown backend",
            |c| rule(c).backends[0].target = BackendTarget::Backend("default/nope:80".into()),
            "ports[0].listeners[0].routes[0].rules[0].backends[0]",
        ),
        (
            "weight too large",
            |c| rule(c).backends[0].weight = MAX_WEIGHT + 1,
            "ports[0].listeners[0].routes[0].rules[0].backends[0]",
        ),
        (
            "retry on a success code",
            |c| rule(c).retry = Some(retry(&[500, 200], 1, 25)),
            "ports[0].listeners[0].routes[0].rules[0].retry",
        ),
        (
            "retry zero times",
            |c| rule(c).retry = Some(retry(&[503], 0, 25)),
            "ports[0].listeners[0].routes[0].rules[0].retry",
        ),
        (
            "too many retries",
            |c| rule(c).retry = Some(retry(&[503], MAX_RETRY_ATTEMPTS + 1, 25)),
            "ports[0].listeners[0].routes[0].rules[0].retry",
        ),
        (
            "retry backoff too long",
            |c| rule(c).retry = Some(retry(&[503], 1, MAX_RETRY_BACKOFF_MS + 1)),
            "ports[0].listeners[0].routes[0].rules[0].retry",
        ),
        (
            "redirect on a backend",
            |c| rule(c).backends[0].filters = vec![Filter::UrlRewrite(UrlRewrite::default())],
            "ports[0].listeners[0].routes[0].rules[0].backends[0].filters[0]",
        ),
        (
            "duplicate backend",
            |c| {
                let b = c.backends[0].clone();
                c.backends.push(b)
            },
            "backends[1]",
        ),
        (
            "zero limit",
            |c| c.settings.max_header_count = 0,
            "settings.max_header_count",
        ),
        (
            "framing header in a filter",
            |c| {
                rule(c).filters = vec![Filter::ResponseHeaderModifier(HeaderModifier {
                    set: vec![HeaderValue {
                        name: "Content-Length".into(),
                        value: "3".into(),
                    }],
                    ..Default::default()
                })]
            },
            "ports[0].listeners[0].routes[0].rules[0].filters[0].set[0]",
        ),
        (
            "hop-by-hop header removed by a backend filter",
            |c| {
                rule(c).backends[0].filters = vec![Filter::RequestHeaderModifier(HeaderModifier {
                    remove: vec!["Connection".into()],
                    ..Default::default()
                })]
            },
            "ports[0].listeners[0].routes[0].rules[0].backends[0].filters[0].remove[0]",
        ),
        (
            "host added",
            |c| {
                rule(c).filters = vec![Filter::RequestHeaderModifier(HeaderModifier {
                    add: vec![HeaderValue {
                        name: "host".into(),
                        value: "a.example".into(),
                    }],
                    ..Default::default()
                })]
            },
            "ports[0].listeners[0].routes[0].rules[0].filters[0].add[0]",
        ),
        (
            "backend timeout above request timeout",
            |c| {
                rule(c).timeouts = RuleTimeouts {
                    request_ms: Some(100),
                    backend_request_ms: Some(200),
                }
            },
            "ports[0].listeners[0].routes[0].rules[0].timeouts",
        ),
        (
            "CORS origin without a scheme",
            |c| rule(c).filters = vec![cors(|f| f.allow_origins = vec!["a.example".into()])],
            "ports[0].listeners[0].routes[0].rules[0].filters[0].allow_origins",
        ),
        (
            "CORS star among other origins",
            |c| {
                rule(c).filters = vec![cors(|f| {
                    f.allow_origins = vec!["*".into(), "https://a.example".into()]
                })]
            },
            "ports[0].listeners[0].routes[0].rules[0].filters[0].allow_origins",
        ),
        (
            "CORS header name that would break the response head",
            |c| {
                rule(c).filters = vec![cors(|f| {
                    f.expose_headers = vec!["x-a\r\nset-cookie: x=1".into()]
                })]
            },
            "ports[0].listeners[0].routes[0].rules[0].filters[0].expose_headers",
        ),
        (
            "CORS max age zero",
            |c| rule(c).filters = vec![cors(|f| f.max_age_seconds = 0)],
            "ports[0].listeners[0].routes[0].rules[0].filters[0].max_age_seconds",
        ),
        (
            "two CORS filters",
            |c| rule(c).filters = vec![cors(|_| {}), cors(|_| {})],
            "ports[0].listeners[0].routes[0].rules[0].filters",
        ),
        (
            "mirror to an unknown backend",
            |c| rule(c).filters = vec![mirror("default/nope:80", 1, 2)],
            "ports[0].listeners[0].routes[0].rules[0].filters[0]",
        ),
        (
            "mirror share above one",
            |c| rule(c).filters = vec![mirror("default/web:80", 3, 2)],
            "ports[0].listeners[0].routes[0].rules[0].filters[0]",
        ),
        (
            "mirror share over zero",
            |c| rule(c).filters = vec![mirror("default/web:80", 0, 0)],
            "ports[0].listeners[0].routes[0].rules[0].filters[0]",
        ),
        (
            "mirror on a backend",
            |c| rule(c).backends[0].filters = vec![mirror("default/web:80", 1, 1)],
            "ports[0].listeners[0].routes[0].rules[0].backends[0].filters[0]",
        ),
    ];
    for (name, breaker, path) in cases {
        let mut config = base();
        breaker(&mut config);
        let error = validate(&config).expect_err(name);
        assert_eq!(error.path, path, "{name}: {error}");
    }
}

#[test]
fn host_may_be_set_on_requests() {
    let mut config = base();
    rule(&mut config).filters = vec![Filter::RequestHeaderModifier(HeaderModifier {
        set: vec![HeaderValue {
            name: "Host".into(),
            value: "internal.example".into(),
        }],
        ..Default::default()
    })];
    assert_eq!(validate(&config), Ok(()));
}

#[test]
fn dns_names() {
    assert!(is_dns_name("a.example.com"));
    assert!(is_dns_name("xn--bcher-kva.example"));
    assert!(!is_dns_name(""));
    assert!(!is_dns_name("-a.com"));
    assert!(!is_dns_name("a..com"));
    assert!(!is_dns_name(&"a".repeat(64)));
}

#[test]
fn content_hash_ignores_generation_only() {
    let a = base();
    let mut b = base();
    b.generation = 99;
    assert_eq!(a.content_hash(), b.content_hash());
    rule(&mut b).backends[0].weight = 2;
    assert_ne!(a.content_hash(), b.content_hash());
}

#[test]
fn content_hash_of_a_known_config_is_pinned() {
    // Operators and agents of different versions compare this hash (the agent rejects an
    // update whose hash it computes differently), so a change to the serialized form, such
    // as leaving out empty fields, breaks mixed-version rollouts. Change it only together
    // with SCHEMA_VERSION.
    let hex: String = base()
        .content_hash()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, PINNED_BASE_HASH);
}

const PINNED_BASE_HASH: &str = "2d53cf85adc4aecdcc18bd4a633e1d576ba0aa81e60b1a6663c40ef18ddb324d";

proptest::proptest! {
    /// Serialization is deterministic: the same config always gives the same bytes.
    #[test]
    fn encoding_is_deterministic(generation in 0u64..u64::MAX, weight in 0u32..MAX_WEIGHT) {
        let mut config = base();
        config.generation = generation;
        rule(&mut config).backends[0].weight = weight;
        let first = crate::frame::encode(&config).unwrap();
        let second = crate::frame::encode(&config.clone()).unwrap();
        proptest::prop_assert_eq!(first, second);
    }
}

fn test_ca_pem() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

fn with_backend_tls(edit: impl FnOnce(&mut BackendTls)) -> CompiledConfig {
    let mut config = base();
    let mut tls = BackendTls {
        policy: "default/web-tls".into(),
        server_name: "web.example.com".into(),
        ca_certificates_pem: test_ca_pem(),
        subject_alt_names: vec![
            SubjectAltName::Hostname("*.example.com".into()),
            SubjectAltName::Uri("spiffe://cluster.local/ns/default/sa/web".into()),
        ],
        system_trust_anchors: false,
        client_certificate: None,
    };
    edit(&mut tls);
    config.backends[0].tls = Some(tls);
    config
}

#[test]
fn a_backend_client_certificate_must_be_in_the_certificates() {
    let missing = with_backend_tls(|t| t.client_certificate = Some("ns/client".into()));
    let error = validate(&missing).unwrap_err().to_string();
    assert!(error.contains("client_certificate"), "{error}");
    let mut present = missing.clone();
    present.certificates.push(Certificate {
        name: "ns/client".into(),
        cert_chain_pem: "-----BEGIN CERTIFICATE-----".into(),
        private_key_pem: "-----BEGIN PRIVATE KEY-----".into(),
    });
    validate(&present).unwrap();
}

#[test]
fn backend_tls_is_validated_field_by_field() {
    validate(&with_backend_tls(|_| {})).unwrap();
    type Edit = fn(&mut BackendTls);
    let cases: [(&str, Edit); 7] = [
        ("invalid server_name", |t| {
            t.server_name = "*.example.com".into()
        }),
        ("CA bundle holds no certificate", |t| {
            t.ca_certificates_pem = "not pem".into()
        }),
        ("CA certificate 1 is not usable", |t| {
            t.ca_certificates_pem =
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into()
        }),
        ("either ca_certificates_pem or system_trust_anchors", |t| {
            t.system_trust_anchors = true
        }),
        ("subject_alt_names[0]", |t| {
            t.subject_alt_names[0] = SubjectAltName::Hostname("bad host".into())
        }),
        ("is not an absolute URI", |t| {
            t.subject_alt_names[1] = SubjectAltName::Uri("no-scheme".into())
        }),
        ("exceed the limit", |t| {
            t.subject_alt_names = vec![SubjectAltName::Uri("urn:x".into()); 17]
        }),
    ];
    for (expected, edit) in cases {
        let error = validate(&with_backend_tls(edit)).unwrap_err().to_string();
        assert!(error.contains(expected), "{expected:?} not in {error:?}");
        assert!(error.contains("backends[0].tls"), "{error}");
    }
}

#[test]
fn system_trust_anchors_stand_in_for_a_ca_bundle() {
    let system = with_backend_tls(|t| {
        t.ca_certificates_pem.clear();
        t.system_trust_anchors = true;
    });
    validate(&system).unwrap();
    let neither = with_backend_tls(|t| t.ca_certificates_pem.clear());
    let error = validate(&neither).unwrap_err().to_string();
    assert!(error.contains("ca_certificates_pem"), "{error}");
}

#[test]
fn absolute_uris_need_a_scheme_and_a_rest() {
    for good in ["spiffe://a/b", "urn:uuid:1", "https://x.example/p?q=1"] {
        assert!(is_absolute_uri(good), "{good}");
    }
    for bad in ["", ":x", "1a:x", "a:", "a b:x", "spiffe://a b", "noscheme"] {
        assert!(!is_absolute_uri(bad), "{bad}");
    }
}

/// `base()` with its port turned HTTPS, its listener presenting a certificate.
fn https_base() -> CompiledConfig {
    let mut config = base();
    config.certificates.push(Certificate {
        name: "default/cert".into(),
        cert_chain_pem: "(not checked here)".into(),
        private_key_pem: "(not checked here)".into(),
    });
    config.ports[0].protocol = PortProtocol::Https;
    config.ports[0].listeners[0].certificates = vec!["default/cert".into()];
    config
}

#[test]
fn client_validation_needs_a_terminating_port_and_a_usable_ca() {
    let valid = ClientValidation {
        ca_certificates_pem: test_ca_pem(),
        mode: ClientValidationMode::AllowValidOnly,
    };
    let mut config = https_base();
    let https = 0;
    config.ports[https].client_validation = Some(valid.clone());
    validate(&config).unwrap();

    config.ports[https].client_validation = Some(ClientValidation {
        ca_certificates_pem: "nothing".into(),
        ..valid.clone()
    });
    let error = validate(&config).unwrap_err().to_string();
    assert!(
        error.contains("client_validation: ca_certificates_pem"),
        "{error}"
    );

    for mut config in [base(), tls_base()] {
        config.ports[0].client_validation = Some(valid.clone());
        let error = validate(&config).unwrap_err().to_string();
        assert!(error.contains("only a port that terminates TLS"), "{error}");
    }
}

#[test]
fn session_resumption_is_turned_off_only_where_tls_terminates() {
    let mut config = https_base();
    config.ports[0].session_resumption_disabled = true;
    validate(&config).unwrap();

    for mut config in [base(), tls_base()] {
        config.ports[0].session_resumption_disabled = true;
        let error = validate(&config).unwrap_err().to_string();
        assert!(
            error.contains("session_resumption_disabled: only a port that terminates TLS"),
            "{error}"
        );
    }
}
