//! The YAML the scenarios apply. Images come from the environment so the same suite runs on
//! kind: `E2E_ECHO_IMAGE` (default `example.test/portcullis/echo:dev`).

use crate::cluster::CONTROLLER_NAME;

pub fn echo_image() -> String {
    std::env::var("E2E_ECHO_IMAGE").unwrap_or_else(|_| "example.test/portcullis/echo:dev".into())
}

/// A GatewayClass of our controller.
pub fn gateway_class(name: &str) -> String {
    gateway_class_for(name, CONTROLLER_NAME)
}

pub fn gateway_class_for(name: &str, controller: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: {name}
spec:
  controllerName: {controller}
"#
    )
}

/// Deployment and Service `name` (port 80) of `replicas` echo pods answering as `backend`.
pub fn echo_backend(namespace: &str, name: &str, backend: &str, replicas: u32) -> String {
    let image = echo_image();
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {namespace}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      terminationGracePeriodSeconds: 1
      enableServiceLinks: false
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        seccompProfile: {{type: RuntimeDefault}}
      containers:
      - name: echo
        image: {image}
        imagePullPolicy: IfNotPresent
        env:
        - {{name: PORT, value: "8080"}}
        - {{name: BACKEND, value: "{backend}"}}
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        - name: POD_NAMESPACE
          valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}
        ports:
        - {{containerPort: 8080, name: http}}
        readinessProbe:
          tcpSocket: {{port: 8080}}
          periodSeconds: 1
        resources:
          requests: {{cpu: 5m, memory: 8Mi}}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {{drop: [ALL]}}
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
spec:
  selector: {{app: {name}}}
  ports:
  - {{name: http, port: 80, targetPort: 8080}}
"#
    )
}

/// A Gateway with one HTTP listener `http` on port 80 whose allowedRoutes are `allowed`
/// (YAML of `allowedRoutes.namespaces`, e.g. `{from: All}`).
pub fn http_gateway(namespace: &str, name: &str, class: &str, allowed: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: {name}
  namespace: {namespace}
spec:
  gatewayClassName: {class}
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes:
      namespaces: {allowed}
"#
    )
}

/// An HTTPRoute for `hostname` attached to Gateway `gateway_namespace/gateway`, sending `/`
/// to `backends` (Service name, weight) on port 80.
pub fn http_route(
    namespace: &str,
    name: &str,
    gateway_namespace: &str,
    gateway: &str,
    hostname: &str,
    backends: &[(&str, u32)],
) -> String {
    let refs: String = backends
        .iter()
        .map(|(service, weight)| format!("    - {{name: {service}, port: 80, weight: {weight}}}\n"))
        .collect();
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {name}
  namespace: {namespace}
spec:
  parentRefs:
  - {{name: {gateway}, namespace: {gateway_namespace}}}
  hostnames: ["{hostname}"]
  rules:
  - matches:
    - path: {{type: PathPrefix, value: /}}
    backendRefs:
{refs}"#
    )
}

/// A `kubernetes.io/tls` Secret.
pub fn tls_secret(namespace: &str, name: &str, cert_pem: &str, key_pem: &str) -> String {
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert_pem),
        indent(key_pem)
    )
}
