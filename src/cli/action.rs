//! `hive start|stop|restart|touch NAME`.

use reqwest::Method;
use serde_json::json;

use super::{CliError, Client};

pub(super) async fn action(client: &Client, name: &str, verb: &str) -> Result<(), CliError> {
    let req = client
        .agent_request(Method::POST, name, &["action"])
        .json(&json!({ "action": verb }));
    client.send(req).await?;
    println!("agent/{name} {verb} requested");
    Ok(())
}
