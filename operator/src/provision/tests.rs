use super::*;
use crate::compile::{self, ObjectKey};
use crate::objects::{Loaded, load_str};

const INPUT: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portcullis}
spec:
  controllerName: portcullis.dev/gateway-controller
  parametersRef: {group: portcullis.dev, kind: GatewayParameters, name: defaults, namespace: portcullis-system}
---
apiVersion: portcullis.dev/v1alpha1
kind: GatewayParameters
metadata: {name: defaults, namespace: portcullis-system}
spec:
  service: {type: NodePort, annotations: {svc: class}}
  proxy: {cores: 2, drainTimeoutSeconds: 20}
  pod: {nodeSelector: {pool: edge}}
---
apiVersion: portcullis.dev/v1alpha1
kind: GatewayParameters
metadata: {name: fixed, namespace: infra}
spec:
  replicas: 3
  proxy: {accessLog: true, logLevel: debug}
  image: registry.example/proxy:custom
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra, uid: 1234-5678}
spec:
  gatewayClassName: portcullis
  infrastructure:
    labels: {team: platform, gateway.networking.k8s.io/gateway-name: spoofed}
    annotations: {owner: platform@example.com}
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: alt, port: 8080, protocol: HTTP}
  - {name: dns, port: 9999, protocol: UDP}
  - {name: bad, port: 9998, protocol: SCTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: scaled, namespace: infra, uid: "9999"}
spec:
  gatewayClassName: portcullis
  addresses:
  - {type: IPAddress, value: 203.0.113.7}
  infrastructure:
    parametersRef: {group: portcullis.dev, kind: GatewayParameters, name: fixed}
  listeners:
  - {name: http, port: 80, protocol: HTTP}
"#;

fn settings() -> ProvisionSettings {
    ProvisionSettings {
        proxy_image: "portcullis/proxy:dev".into(),
        agent_image: "portcullis/portcullis:dev".into(),
        image_pull_policy: "IfNotPresent".into(),
        config_server: "https://portcullis.portcullis-system.svc:9443".into(),
        config_server_name: "portcullis.portcullis-system.svc".into(),
        seccomp: Seccomp::Localhost("portcullis/proxy.json".into()),
    }
}

fn rendered(name: &str) -> Provisioned {
    rendered_from(INPUT, name)
}

fn rendered_from(input: &str, name: &str) -> Provisioned {
    let mut loaded = Loaded::default();
    load_str(input, "test", &mut loaded).unwrap();
    let output = compile::compile(&loaded.input);
    let key = ObjectKey::new("infra", name);
    let gateway = loaded
        .input
        .gateways
        .iter()
        .find(|g| ObjectKey::of(*g) == key)
        .unwrap();
    render(gateway, &output.gateways[&key], &settings()).unwrap()
}

fn json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap()
}

#[test]
fn names_are_shortened_with_a_hash() {
    assert_eq!(resource_name("edge", "portcullis"), "edge-portcullis");
    let long = resource_name(&"g".repeat(50), &"c".repeat(30));
    assert!(long.len() <= 63, "{long}");
    assert_eq!(
        long,
        resource_name(&"g".repeat(50), &"c".repeat(30)),
        "deterministic"
    );
    assert_ne!(
        long,
        resource_name(&"g".repeat(50), &"d".repeat(30)),
        "distinct inputs stay distinct"
    );
    assert!(
        long.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    );
}

/// DNS-1035 label rules (a Service name), checked independently of the code under test.
fn assert_dns1035(name: &str) {
    assert!(
        !name.is_empty() && name.len() <= 63,
        "{name:?}: {} characters",
        name.len()
    );
    assert!(
        name.starts_with(|c: char| c.is_ascii_lowercase()),
        "{name:?} does not start with a letter"
    );
    assert!(
        name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()),
        "{name:?} does not end with an alphanumeric"
    );
    assert!(
        name.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "{name:?} has a character outside [a-z0-9-]"
    );
}

/// Label value rules, checked independently of the code under test.
fn assert_label_value(value: &str) {
    if value.is_empty() {
        return;
    }
    assert!(value.len() <= 63, "{value:?}: {} characters", value.len());
    assert!(
        value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()),
        "{value:?} does not begin and end with an alphanumeric"
    );
    assert!(
        value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
        "{value:?} has a character outside [A-Za-z0-9-_.]"
    );
}

/// A 253-character DNS subdomain (the longest Gateway name) with dots at awkward places: one
/// right at the cut after 54 characters of `<name>-<class>`.
fn longest_name(fill: char) -> String {
    let mut name = String::new();
    while name.len() < 253 {
        let label = if name.is_empty() {
            53
        } else {
            (253 - name.len() - 1).min(40)
        };
        if !name.is_empty() {
            name.push('.');
        }
        name.extend(std::iter::repeat_n(fill, label));
    }
    assert_eq!(name.len(), 253);
    assert_eq!(&name[53..54], ".");
    name
}

/// What `resource_name` returned before names were made DNS-1035 labels: names that were
/// valid and only too long must keep it, or existing Deployments would be renamed.
fn old_resource_name(gateway: &str, class: &str) -> String {
    use sha2::{Digest, Sha256};
    let full = format!("{gateway}-{class}");
    if full.len() <= 63 {
        return full;
    }
    let digest = Sha256::digest(full.as_bytes());
    let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("{}-{hash}", full[..54].trim_end_matches(['-', '.']))
}

#[test]
fn resource_names_are_dns1035_labels() {
    let long = longest_name('g');
    let long_class = longest_name('c');
    let cases: &[(&str, &str, &str)] = &[
        // (gateway, class, what the case is about)
        ("edge", "portcullis", "already valid"),
        ("a.b", "c", "dotted Gateway"),
        ("a-b", "c", "the same with '-'"),
        ("edge", "portcullis.example.com", "dotted class"),
        ("edge", "portcullis-example-com", "the same with '-'"),
        ("1gw", "portcullis", "leading digit"),
        ("1.2.3", "portcullis", "digits and dots only"),
        ("0", "0", "digits only"),
        (&long, "portcullis", "253 characters with dots"),
        (&long, &long_class, "both 253 characters"),
        ("edge", &long_class, "253-character class"),
        (
            "Edge",
            "portcullis",
            "upper case (standalone files are not validated)",
        ),
    ];
    let mut seen = std::collections::BTreeMap::new();
    for (gateway, class, about) in cases {
        let name = resource_name(gateway, class);
        assert_dns1035(&name);
        assert_eq!(
            name,
            resource_name(gateway, class),
            "{about}: deterministic"
        );
        if let Some(other) = seen.insert(name.clone(), (*gateway, *class)) {
            panic!("{about}: {gateway}+{class} and {other:?} share the name {name}");
        }
    }
    // Valid names are kept as they always were.
    assert_eq!(resource_name("edge", "portcullis"), "edge-portcullis");
    assert_eq!(resource_name("a-b", "c"), "a-b-c");
    // A rewritten name is marked with the hash of the original, so '.' and '-' stay apart.
    let dotted = resource_name("a.b", "c");
    assert!(dotted.starts_with("a-b-c-") && dotted.len() == "a-b-c-".len() + 8);
    assert!(resource_name("1gw", "portcullis").starts_with("gw-1gw-portcullis-"));
    // Names that only had to be shortened keep the name earlier versions gave them.
    for (gateway, class) in [
        ("g".repeat(50), "c".repeat(30)),
        ("g".repeat(53), "class".to_string()),
        ("a".repeat(200), "portcullis".to_string()),
    ] {
        let name = resource_name(&gateway, &class);
        assert_dns1035(&name);
        assert_eq!(name, old_resource_name(&gateway, &class));
    }
}

#[test]
fn label_values_fit() {
    let cases: Vec<String> = vec![
        "edge".into(),
        "a".repeat(63),
        "a".repeat(64),
        "a".repeat(253),
        longest_name('g'),
        format!("{}.{}", "a".repeat(53), "b".repeat(40)),
        format!("{}-{}", "a".repeat(54), "b".repeat(40)),
        "1.2.3".into(),
        "-odd-".into(),
        "Mixed_Case.name".into(),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for value in &cases {
        let label = label_value(value);
        assert_label_value(&label);
        assert!(
            seen.insert(label.clone()),
            "{value:?} -> {label:?} seen before"
        );
        if value.len() <= 63 && value != "-odd-" {
            assert_eq!(&label, value, "valid values are kept");
        }
    }
    // Two long names that differ only beyond the kept prefix stay distinct.
    let a = format!("{}x", "g".repeat(100));
    let b = format!("{}y", "g".repeat(100));
    assert_ne!(label_value(&a), label_value(&b));
    assert!(label_value(&a).starts_with(&"g".repeat(54)));
}

/// A Gateway named `name` of class `class` with one HTTP listener.
fn rendered_named(name: &str, class: &str) -> Provisioned {
    let input = format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: "{class}"}}
spec: {{controllerName: portcullis.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: "{name}", namespace: infra, uid: "42"}}
spec:
  gatewayClassName: "{class}"
  listeners:
  - {{name: http, port: 80, protocol: HTTP}}
"#
    );
    let mut loaded = Loaded::default();
    load_str(&input, "test", &mut loaded).unwrap();
    let output = compile::compile(&loaded.input);
    let key = ObjectKey::new("infra", name);
    let gateway = &loaded.input.gateways[0];
    render(gateway, &output.gateways[&key], &settings()).unwrap()
}

#[test]
fn rendered_objects_have_valid_names_labels_and_matching_selectors() {
    let long = longest_name('g');
    for (gateway, class) in [
        ("edge", "portcullis"),
        ("edge.example.com", "portcullis"),
        ("1gw", "portcullis"),
        (long.as_str(), "portcullis.example.com"),
        (&"g".repeat(64), "portcullis"),
    ] {
        let p = rendered_named(gateway, class);
        assert_dns1035(&p.name);
        let service = json(&p.service.clone().expect("a listener, so a Service"));
        let deployment = json(&p.deployment);
        let template = &deployment["spec"]["template"];
        for metadata in [
            &json(&p.service_account)["metadata"],
            &deployment["metadata"],
            &service["metadata"],
            &template["metadata"],
        ] {
            if let Some(name) = metadata["name"].as_str() {
                assert_dns1035(name);
                assert_eq!(name, p.name);
            }
            for value in metadata["labels"].as_object().unwrap().values() {
                assert_label_value(value.as_str().unwrap());
            }
            assert_eq!(
                metadata["labels"][GATEWAY_NAME_LABEL],
                label_value(gateway).as_str()
            );
        }
        assert_eq!(template["spec"]["serviceAccountName"], p.name.as_str());
        // Both selectors select the pods the Deployment creates.
        let pod_labels = template["metadata"]["labels"].as_object().unwrap();
        for selector in [
            &deployment["spec"]["selector"]["matchLabels"],
            &service["spec"]["selector"],
        ] {
            let selector = selector.as_object().unwrap();
            assert!(selector.contains_key(GATEWAY_NAME_LABEL));
            for (key, value) in selector {
                assert_label_value(value.as_str().unwrap());
                assert_eq!(pod_labels.get(key), Some(value), "{gateway}: {key}");
            }
        }
        let secret = last_good_secret(&p, Vec::new(), "abcd");
        let secret_name = secret.metadata.name.unwrap();
        assert!(secret_name.len() <= 253, "{secret_name}");
    }
    // Short valid names are labelled with themselves.
    let p = rendered_named("edge", "portcullis");
    assert_eq!(p.name, "edge-portcullis");
    assert_eq!(
        json(&p.service.unwrap())["spec"]["selector"][GATEWAY_NAME_LABEL],
        "edge"
    );
}

#[test]
fn objects_carry_gateway_labels_infrastructure_and_owner() {
    let p = rendered("edge");
    assert_eq!(p.name, "edge-portcullis");
    for metadata in [
        json(&p.service_account)["metadata"].clone(),
        json(&p.deployment)["metadata"].clone(),
        json(&p.service.clone().unwrap())["metadata"].clone(),
    ] {
        assert_eq!(metadata["namespace"], "infra");
        assert_eq!(
            metadata["labels"][GATEWAY_NAME_LABEL], "edge",
            "never the spoofed value"
        );
        assert_eq!(metadata["labels"][GATEWAY_CLASS_LABEL], "portcullis");
        assert_eq!(metadata["labels"]["team"], "platform");
        assert_eq!(metadata["annotations"]["owner"], "platform@example.com");
        assert_eq!(metadata["ownerReferences"][0]["kind"], "Gateway");
        assert_eq!(metadata["ownerReferences"][0]["uid"], "1234-5678");
        assert_eq!(metadata["ownerReferences"][0]["controller"], true);
    }
    let pod = json(&p.deployment)["spec"]["template"].clone();
    assert_eq!(
        pod["metadata"]["labels"]["team"], "platform",
        "pods carry infrastructure labels"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["owner"],
        "platform@example.com"
    );
}

#[test]
fn deployment_is_hardened_and_wired() {
    let p = rendered("edge");
    let d = json(&p.deployment);
    let spec = &d["spec"];
    assert!(
        spec.get("replicas").is_none(),
        "unset replicas are left to kubectl scale / HPA"
    );
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["serviceAccountName"], "edge-portcullis");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let uid = pod["securityContext"]["runAsUser"].as_i64().unwrap();
    assert_eq!(uid, super::proxy_uid("infra/edge"));
    assert_eq!(pod["securityContext"]["runAsGroup"], uid);
    assert_eq!(pod["securityContext"]["fsGroup"], uid);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let proxy_seccomp = &pod["containers"][0]["securityContext"]["seccompProfile"];
    assert_eq!(proxy_seccomp["type"], "Localhost");
    assert_eq!(proxy_seccomp["localhostProfile"], "portcullis/proxy.json");
    assert_eq!(pod["nodeSelector"]["pool"], "edge", "class defaults apply");
    assert_eq!(
        pod["terminationGracePeriodSeconds"], 35,
        "drain 20 + delay 5 + 10"
    );
    let containers = pod["containers"].as_array().unwrap();
    let names: Vec<_> = containers
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["proxy", "agent"]);
    for c in containers {
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    }
    let proxy = &containers[0];
    assert_eq!(proxy["image"], "portcullis/proxy:dev");
    let args: Vec<&str> = proxy["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--cores=2"));
    assert!(args.contains(&"--drain-timeout=20"));
    assert!(!args.contains(&"--access-log"));
    let ports: Vec<u64> = proxy["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ports,
        [19000],
        "only the admin port: listener ports in the pod template would roll pods"
    );
    let agent = &containers[1];
    let agent_args = agent["args"].to_string();
    assert!(agent_args.contains("--gateway=infra/edge"));
    assert!(agent_args.contains("--config-server=https://portcullis.portcullis-system.svc:9443"));
    let volumes = pod["volumes"].to_string();
    assert!(
        volumes.contains(TOKEN_AUDIENCE),
        "the agent's token is audience-bound"
    );
    assert!(
        pod["containers"][0]["volumeMounts"]
            .to_string()
            .contains("/var/run/portcullis")
    );
    assert!(
        !pod["containers"][0]["volumeMounts"]
            .to_string()
            .contains("secrets"),
        "the proxy sees no credentials"
    );
    // A new pod starts from the last-good Secret, which may not exist yet.
    let last_good = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "last-good")
        .unwrap();
    assert_eq!(
        last_good["secret"]["secretName"],
        "edge-portcullis-last-good"
    );
    assert_eq!(last_good["secret"]["optional"], true);
    assert!(agent_args.contains("--bootstrap-file=/etc/portcullis/last-good/config.json.gz"));
    assert!(
        agent["volumeMounts"]
            .to_string()
            .contains("/etc/portcullis/last-good")
    );
}

#[test]
fn the_last_good_secret_is_owned_labelled_and_annotated() {
    let p = rendered("edge");
    let secret = last_good_secret(&p, b"gzipped".to_vec(), "abcd");
    assert_eq!(
        secret.metadata.name.as_deref(),
        Some("edge-portcullis-last-good")
    );
    assert_eq!(secret.metadata.namespace.as_deref(), Some("infra"));
    assert_eq!(secret.type_.as_deref(), Some(LAST_GOOD_SECRET_TYPE));
    assert_eq!(
        secret.metadata.annotations.as_ref().unwrap()[CONTENT_HASH_ANNOTATION],
        "abcd"
    );
    assert_eq!(
        secret.metadata.labels.as_ref().unwrap()[MANAGED_BY_LABEL],
        MANAGED_BY
    );
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Gateway", "edge")
    );
    assert_eq!(secret.data.unwrap()[LAST_GOOD_KEY].0, b"gzipped");
}

#[test]
fn service_follows_the_listeners_and_parameters() {
    let p = rendered("edge");
    let s = json(&p.service.unwrap());
    assert_eq!(s["spec"]["type"], "NodePort");
    assert_eq!(s["metadata"]["annotations"]["svc"], "class");
    let ports: Vec<(u64, &str, &str)> = s["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].as_u64().unwrap(),
                p["protocol"].as_str().unwrap(),
                p["name"].as_str().unwrap(),
            )
        })
        .collect();
    // An unsupported protocol gets no port; a UDP listener gets a UDP one.
    assert_eq!(
        ports,
        [
            (80, "TCP", "port-80"),
            (8080, "TCP", "port-8080"),
            (9999, "UDP", "udp-9999")
        ]
    );
    assert_eq!(s["spec"]["selector"][GATEWAY_NAME_LABEL], "edge");
    assert!(s["spec"].get("externalIPs").is_none());
    // A Gateway's static addresses become its Service's external IPs.
    let scaled = json(&rendered("scaled").service.unwrap());
    assert_eq!(
        scaled["spec"]["externalIPs"],
        serde_json::json!(["203.0.113.7"])
    );
}

fn service_ports(p: &Provisioned) -> Vec<u64> {
    let service = json(p.service.as_ref().expect("listeners, so a Service"));
    service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|port| port["port"].as_u64().unwrap())
        .collect()
}

/// A listener that cannot be served now still keeps its Service port, so a load balancer's
/// address survives a missing certificate or a class that is not accepted.
#[test]
fn the_service_keeps_the_ports_of_listeners_that_cannot_serve_yet() {
    const BROKEN: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portcullis}
spec: {controllerName: portcullis.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: misconfigured}
spec:
  controllerName: portcullis.dev/gateway-controller
  parametersRef: {group: portcullis.dev, kind: GatewayParameters, name: missing, namespace: infra}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: no-cert, namespace: infra, uid: "1"}
spec:
  gatewayClassName: portcullis
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - name: https
    port: 443
    protocol: HTTPS
    tls: {certificateRefs: [{name: missing-cert}]}
  - {name: udp, port: 53, protocol: UDP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: unaccepted-class, namespace: infra, uid: "2"}
spec:
  gatewayClassName: misconfigured
  listeners:
  - {name: http, port: 8080, protocol: HTTP}
"#;
    let no_cert = rendered_from(BROKEN, "no-cert");
    assert_eq!(service_ports(&no_cert), [53, 80, 443]);
    let unaccepted = rendered_from(BROKEN, "unaccepted-class");
    assert_eq!(service_ports(&unaccepted), [8080]);
    // Listeners come and go without rolling the proxy pods.
    let without_https = BROKEN.replace(
        "  - name: https\n    port: 443\n    protocol: HTTPS\n    tls: {certificateRefs: [{name: missing-cert}]}\n",
        "",
    );
    assert_ne!(without_https, BROKEN);
    let fewer = rendered_from(&without_https, "no-cert");
    assert_eq!(service_ports(&fewer), [53, 80]);
    assert_eq!(
        json(&fewer.deployment)["spec"]["template"],
        json(&no_cert.deployment)["spec"]["template"]
    );
}

#[test]
fn gateway_parameters_override_the_class() {
    let p = rendered("scaled");
    let d = json(&p.deployment);
    assert_eq!(d["spec"]["replicas"], 3);
    let proxy = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(proxy["image"], "registry.example/proxy:custom");
    let args = proxy["args"].to_string();
    assert!(
        args.contains("--access-log")
            && args.contains("--log-level=debug")
            && args.contains("--cores=2")
    );
}

#[test]
fn seccomp_modes() {
    let mut loaded = Loaded::default();
    load_str(INPUT, "test", &mut loaded).unwrap();
    let output = compile::compile(&loaded.input);
    let key = ObjectKey::new("infra", "edge");
    let gateway = loaded
        .input
        .gateways
        .iter()
        .find(|g| ObjectKey::of(*g) == key)
        .unwrap();
    for (mode, expected) in [
        (Seccomp::RuntimeDefault, "RuntimeDefault"),
        (Seccomp::Unconfined, "Unconfined"),
    ] {
        let settings = ProvisionSettings {
            seccomp: mode,
            ..settings()
        };
        let p = render(gateway, &output.gateways[&key], &settings).unwrap();
        let pod = &json(&p.deployment)["spec"]["template"]["spec"];
        assert_eq!(
            pod["containers"][0]["securityContext"]["seccompProfile"]["type"],
            expected
        );
        assert!(
            pod["containers"][1]["securityContext"]["seccompProfile"].is_null(),
            "the agent needs no io_uring: it keeps the pod's profile"
        );
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
    }
}

#[test]
fn each_gateway_gets_a_stable_uid_of_its_own() {
    // io_uring memory is charged per UID on the node; Gateways must not share one budget.
    let uids: std::collections::BTreeSet<i64> = (0..1000)
        .map(|i| super::proxy_uid(&format!("team-{}/gw-{i}", i % 7)))
        .collect();
    assert!(
        uids.len() >= 999,
        "{} distinct UIDs for 1000 Gateways",
        uids.len()
    );
    for uid in &uids {
        assert!(
            (100_000..=i64::from(i32::MAX)).contains(uid),
            "{uid} out of range"
        );
    }
    assert_eq!(super::proxy_uid("a/b"), super::proxy_uid("a/b"));
    assert_ne!(super::proxy_uid("a/b"), super::proxy_uid("b/a"));
}
