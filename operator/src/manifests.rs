//! YAML renderings of what this project defines, for `portcullis crd` and `make manifests`.

use anyhow::Context;

/// Every Portcullis CRD as one multi-document YAML stream.
pub fn crds_yaml() -> anyhow::Result<String> {
    let mut out = String::new();
    for crd in portcullis_api::v1alpha1::crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).context("rendering a CRD as YAML")?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_render_as_yaml() {
        let yaml = crds_yaml().unwrap();
        assert!(yaml.starts_with("---\n"));
        assert!(yaml.contains("name: gatewayparameters.portcullis.dev"));
        assert!(yaml.contains("x-kubernetes-validations"));
    }
}
