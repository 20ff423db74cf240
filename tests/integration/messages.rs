//! What an agent's status and events say, as a person reads them: once, true, and in
//! order (issue 25's wording and timing defects).

use reqwest::Method;
use serde_json::Value;

use crate::harness::{agent_yaml, wait_for, Hive, IMAGE};

#[tokio::test]
async fn a_missing_image_is_said_once_and_never_as_a_churn_of_containers() {
    let hive = Hive::start().await;
    let doc = agent_yaml("nopull", "").replace(IMAGE, "hive-test-absent:1");
    assert_eq!(hive.put_yaml("nopull", &doc).await.status(), 201);
    let status = wait_for("the pull to have failed", || async {
        let a = hive.get("nopull").await?;
        let m = a["status"]["message"].as_str()?.to_string();
        m.contains("could not be pulled")
            .then_some(a["status"].clone())
    })
    .await;
    let message = status["message"].as_str().unwrap();
    assert_eq!(
        message.matches("could not be pulled").count(),
        1,
        "{message}"
    );
    assert_eq!(message.matches("build or load it").count(), 1, "{message}");
    // Passes go on (the resync every 2 s, the retries): none counts a create that never
    // made a container as one that disappeared.
    wait_for("several more passes of the agent", || async {
        let m = hive.get_text("/metrics").await;
        let errors: f64 = m
            .lines()
            .find(|l| l.starts_with("hive_reconciles_total{result=\"error\"}"))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()?;
        (errors >= 6.0).then_some(())
    })
    .await;
    let events: Value = hive
        .req(Method::GET, "/v1/agents/nopull/events")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = events.to_string();
    assert!(
        !text.contains("keeps disappearing") && !text.contains("ContainerChurn"),
        "{events:#}"
    );
}
