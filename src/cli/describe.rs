//! `hive describe NAME`: spec, status, conditions and recent events.

use super::render;
use super::{CliError, Client};

pub(super) async fn describe(client: &Client, name: &str) -> Result<(), CliError> {
    let a = client
        .agent(name)
        .await?
        .ok_or_else(|| CliError::new(format!("agent {name:?} not found")))?;
    let events = client.events(name).await?.items;
    print!("{}", render::describe(&a, &events));
    Ok(())
}
