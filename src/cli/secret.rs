//! `hive secret set|get|delete`: the secrets agents read through `envFrom`, kubectl's
//! `create secret generic` in Hive's words. Values go in from literals or an env file
//! (`-` for stdin, so they need not appear on a command line) and never come back out.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use reqwest::Method;
use serde_json::Value;

use super::{CliError, Client};

/// A request to `/v1/secrets[/{name}]`, the name sent as one path segment.
fn secret_request(client: &Client, method: Method, name: Option<&str>) -> reqwest::RequestBuilder {
    let mut segments = vec!["v1", "secrets"];
    segments.extend(name);
    client.path_request(method, &segments)
}

/// `KEY=VALUE` lines (blank lines and `#` comments skipped), as docker's `--env-file`.
fn parse_env_file(source: &str, text: &str) -> Result<Vec<(String, String)>, CliError> {
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        pairs.push(
            literal(line).map_err(|e| CliError::new(format!("{source}, line {}: {e}", i + 1)))?,
        );
    }
    Ok(pairs)
}

/// One `KEY=VALUE`.
fn literal(pair: &str) -> Result<(String, String), String> {
    match pair.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err("expected KEY=VALUE".to_string()),
    }
}

fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, CliError> {
    let (source, text) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::new(format!("cannot read stdin: {e}")))?;
        ("stdin".to_string(), text)
    } else {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::new(format!("cannot read {}: {e}", path.display())))?;
        (path.display().to_string(), text)
    };
    parse_env_file(&source, &text)
}

/// `hive secret set NAME --from-literal K=V... --from-env-file FILE...`: writes the whole
/// secret (keys not given are dropped), as `PUT /v1/secrets/{name}`.
pub(super) async fn set(
    client: &Client,
    name: &str,
    literals: &[String],
    env_files: &[PathBuf],
    owner: Option<&str>,
) -> Result<(), CliError> {
    let mut data = BTreeMap::new();
    for path in env_files {
        data.extend(read_env_file(path)?);
    }
    for pair in literals {
        let (k, v) = literal(pair)
            .map_err(|e| CliError::new(format!("--from-literal {e}, not {pair:?}")))?;
        data.insert(k, v);
    }
    if data.is_empty() {
        return Err(CliError::new(
            "give the secret's keys with --from-literal KEY=VALUE or --from-env-file FILE (- for stdin)",
        ));
    }
    let mut request = secret_request(client, Method::PUT, Some(name)).json(&data);
    if let Some(owner) = owner {
        request = request.query(&[("owner", owner)]);
    }
    let shown = client.json(request).await?;
    println!("secret/{name} set: {}", keys_of(&shown));
    Ok(())
}

/// `hive secret get [NAME]`: names and keys, never values.
pub(super) async fn get(client: &Client, name: Option<&str>) -> Result<(), CliError> {
    let answer = client
        .json(secret_request(client, Method::GET, name))
        .await?;
    let items = match name {
        Some(_) => vec![answer],
        None => answer["items"].as_array().cloned().unwrap_or_default(),
    };
    println!("{:<32} KEYS", "NAME");
    for s in &items {
        println!("{:<32} {}", s["name"].as_str().unwrap_or("?"), keys_of(s));
    }
    Ok(())
}

/// `hive secret delete NAME...`.
pub(super) async fn delete(client: &Client, names: &[String]) -> Result<(), CliError> {
    for name in names {
        client
            .send(secret_request(client, Method::DELETE, Some(name)))
            .await?;
        println!("secret/{name} deleted");
    }
    Ok(())
}

fn keys_of(shown: &Value) -> String {
    shown["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_read_as_docker_reads_them() {
        let pairs = parse_env_file("f", "# keys\n\nA=1\n  B=x=y\nC=\n").unwrap();
        assert_eq!(
            pairs,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "x=y".into()),
                ("C".into(), "".into())
            ]
        );
        let err = parse_env_file("keys.env", "A=1\nnot a pair\n").unwrap_err();
        assert_eq!(err.to_string(), "keys.env, line 2: expected KEY=VALUE");
        assert!(literal("=v").is_err());
    }
}
