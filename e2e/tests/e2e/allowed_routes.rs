//! Scenario 3: a listener that allows only its own namespace refuses an app team's route
//! (NotAllowedByListeners, also as a Warning event); admitting the app namespace by label makes
//! it accepted (and says so in an event) and served.

use portcullis_e2e::cluster::serving;
use portcullis_e2e::{eventually, objects, suffix};

use crate::{READY, STATUS, setup};

#[tokio::test(flavor = "multi_thread")]
async fn a_route_is_refused_until_allowed_routes_admits_its_namespace() {
    let setup = setup().await;
    let cluster = &setup.cluster;
    let access = suffix();
    let infra = cluster.namespace("e2e-infra", &[]).await;
    let app = cluster
        .namespace("e2e-app", &[("e2e-access", &access)])
        .await;
    cluster
        .apply(&objects::http_gateway(
            &infra.name,
            "shared",
            &setup.class,
            "{from: Same}",
        ))
        .await;
    cluster
        .apply(&objects::echo_backend(&app.name, "web", "web", 1))
        .await;
    cluster
        .apply(&objects::http_route(
            &app.name,
            "web",
            &infra.name,
            "shared",
            "web.example.com",
            &[("web", 1)],
        ))
        .await;

    let refused = eventually("the route refused by the listener", STATUS, || async {
        Ok(cluster
            .route_condition(&app.name, "web", "shared", "Accepted")
            .await
            .filter(|c| c.status == "False"))
    })
    .await;
    assert_eq!(refused.reason, "NotAllowedByListeners");
    eventually("a Warning event about the refusal", STATUS, || async {
        let reasons = cluster.event_reasons(&app.name, "HTTPRoute", "web").await;
        Ok(reasons
            .iter()
            .any(|r| r == "NotAllowedByListeners")
            .then_some(()))
    })
    .await;
    let address = cluster
        .programmed_address(&infra.name, "shared", READY)
        .await;

    let selector =
        format!("{{from: Selector, selector: {{matchLabels: {{e2e-access: \"{access}\"}}}}}}");
    cluster
        .apply(&objects::http_gateway(
            &infra.name,
            "shared",
            &setup.class,
            &selector,
        ))
        .await;
    let accepted = eventually("the route accepted", STATUS, || async {
        Ok(cluster
            .route_condition(&app.name, "web", "shared", "Accepted")
            .await
            .filter(|c| c.status == "True"))
    })
    .await;
    assert_eq!(accepted.reason, "Accepted");
    eventually("an event about the acceptance", STATUS, || async {
        let reasons = cluster.event_reasons(&app.name, "HTTPRoute", "web").await;
        Ok(reasons.iter().any(|r| r == "Accepted").then_some(()))
    })
    .await;
    let echo = serving(&address, "web.example.com", READY).await;
    assert_eq!(echo.namespace, app.name);
    assert_eq!(echo.host, "web.example.com");
}
