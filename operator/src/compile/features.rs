//! The Gateway API features this implementation claims in `GatewayClass.status.supportedFeatures`.
//! The conformance suite tests exactly this list, so it holds only what passes.

/// Supported feature names, sorted ascending as the API requires.
pub fn supported() -> Vec<&'static str> {
    let mut features = vec![
        "BackendTLSPolicy",
        "BackendTLSPolicySANValidation",
        "Gateway",
        "GatewayAddressEmpty",
        "GatewayBackendClientCertificate",
        "GatewayFrontendClientCertificateValidation",
        "GatewayFrontendClientCertificateValidationInsecureFallback",
        "GatewayHTTPSListenerDetectMisdirectedRequests",
        "GRPCRoute",
        "GRPCRouteNamedRouteRule",
        "GatewayHTTPListenerIsolation",
        "GatewayInfrastructurePropagation",
        "ListenerSet",
        "GatewayPort8080",
        "GatewayStaticAddresses",
        "HTTPRoute",
        "HTTPRoute303RedirectStatusCode",
        "HTTPRoute307RedirectStatusCode",
        "HTTPRoute308RedirectStatusCode",
        "HTTPRouteBackendProtocolH2C",
        "HTTPRouteBackendProtocolWebSocket",
        "HTTPRouteBackendRequestHeaderModification",
        "HTTPRouteBackendTimeout",
        "HTTPRouteCORS",
        "HTTPRouteDestinationPortMatching",
        "HTTPRouteHostRewrite",
        "HTTPRouteMethodMatching",
        "HTTPRouteNamedRouteRule",
        "HTTPRouteParentRefPort",
        "HTTPRoutePathRedirect",
        "HTTPRoutePathRewrite",
        "HTTPRoutePortRedirect",
        "HTTPRouteQueryParamMatching",
        "HTTPRouteRequestMirror",
        "HTTPRouteRequestMultipleMirrors",
        "HTTPRouteRequestPercentageMirror",
        "HTTPRouteRequestTimeout",
        "HTTPRouteRetry",
        "HTTPRouteRetryBackendTimeout",
        "HTTPRouteRetryConnectionError",
        "HTTPRouteResponseHeaderModification",
        "HTTPRouteSchemeRedirect",
        "ReferenceGrant",
        "TCPRoute",
        "TLSRoute",
        "TLSRouteModeMixed",
        "TLSRouteModeTerminate",
        "UDPRoute",
    ];
    features.sort_unstable();
    features
}

#[cfg(test)]
mod tests {
    #[test]
    fn sorted_and_unique() {
        let features = super::supported();
        let mut sorted = features.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(features, sorted);
        assert!(features.len() <= 64);
    }
}
