//! `hive apply -f FILE|DIR|- [--dry-run] [--prune [--applyset NAME] [--prune-owner O]...]`:
//! many agents at once through `POST /v1/apply`; with `--prune`, the server also deletes
//! the members of the apply set (by default named after the directory) that it no longer
//! declares.

use std::io::Write;
use std::path::PathBuf;

use reqwest::Method;
use serde_json::{json, Value};

use super::{read_documents, CliError, Client, Sourced};
use crate::wire::APPLY_SOURCE;

/// What `--prune` was given.
pub(super) struct PruneArgs {
    /// `--applyset`.
    pub applyset: Option<String>,
    /// `--prune-owner`.
    pub owners: Vec<String>,
}

pub(super) async fn apply(
    client: &Client,
    files: &[PathBuf],
    dry_run: bool,
    prune: Option<PruneArgs>,
) -> Result<(), CliError> {
    let mut query: Vec<(&str, String)> = Vec::new();
    let docs = if let Some(prune) = &prune {
        let [dir] = files else {
            return Err(CliError::new("--prune takes exactly one directory: -f DIR"));
        };
        if !dir.is_dir() {
            return Err(CliError::new(format!(
                "--prune takes a directory; {} is not one",
                dir.display()
            )));
        }
        let set = match &prune.applyset {
            Some(set) => set.clone(),
            None => default_applyset(dir)?,
        };
        query.push(("prune", "true".into()));
        query.push(("applyset", set));
        if !prune.owners.is_empty() {
            query.push(("pruneOwners", prune.owners.join(",")));
        }
        read_sourced(dir)?
    } else {
        read_documents(files)?
    };
    let body: Vec<&Value> = docs.iter().map(|d| &d.value).collect();
    if dry_run {
        query.push(("dryRun", "true".into()));
    }
    let r = client
        .request(Method::POST, "/v1/apply")
        .query(&query)
        .json(&body)
        .send()
        .await
        .map_err(|e| client.unreachable(e))?;
    if r.status() == reqwest::StatusCode::UNPROCESSABLE_ENTITY {
        let e: Value = r.json().await.unwrap_or(Value::Null);
        if let Some(bad) = e["error"]["documents"].as_array() {
            let lines: Vec<String> = bad
                .iter()
                .map(|d| {
                    let i = d["index"].as_u64().unwrap_or(0) as usize;
                    let at = docs.get(i).map_or("?", |d| d.source.as_str());
                    format!("  {at}: {}", d["message"].as_str().unwrap_or(""))
                })
                .collect();
            return Err(CliError::new(format!(
                "{}\n{}",
                e["error"]["message"]
                    .as_str()
                    .unwrap_or("invalid documents"),
                lines.join("\n")
            )));
        }
        return Err(CliError::new(
            e["error"]["message"]
                .as_str()
                .unwrap_or("invalid")
                .to_string(),
        ));
    }
    let answer: crate::wire::ApplyAnswer = match client.json_of(r).await {
        Ok(v) => serde_json::from_value(v)
            .map_err(|e| CliError::new(format!("the server's answer is not an apply's: {e}")))?,
        Err(e) => return Err(e),
    };
    let suffix = if dry_run { " (dry run)" } else { "" };
    let mut out = std::io::stdout().lock();
    for item in &answer.items {
        let result = serde_json::to_value(item.result)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = writeln!(out, "agent/{} {result}{suffix}", item.name);
        if let Some(diff) = &item.diff {
            for line in diff.lines() {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    Ok(())
}

/// The apply set a directory's prune names when `--applyset` is not given: the
/// directory's own name (as a label value: other characters dropped) and a digest of the
/// host and the directory's full path, so that no two directories share a set, not even
/// two called `manifests` (`hive apply -f a/manifests --prune` never prunes what
/// `hive apply -f b/manifests --prune` made). Name the set with `--applyset` to share it
/// between checkouts or machines.
fn default_applyset(dir: &std::path::Path) -> Result<String, CliError> {
    use sha2::Digest;
    let canonical = std::fs::canonicalize(dir)
        .map_err(|e| CliError::new(format!("cannot read {}: {e}", dir.display())))?;
    let name = canonical
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let kept: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    let stem: String = kept
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .chars()
        .take(50)
        .collect();
    let stem = stem.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let digest = sha2::Sha256::digest(format!("{}:{}", host.trim(), canonical.display()));
    let tag = hex::encode(&digest[..4]);
    Ok(if stem.is_empty() {
        format!("dir-{tag}")
    } else {
        format!("{stem}-{tag}")
    })
}

/// Every document below `dir`, annotated with its source path as the manifests sync does.
fn read_sourced(dir: &std::path::Path) -> Result<Vec<Sourced>, CliError> {
    let files = crate::manifests::manifest_files(dir)
        .map_err(|e| CliError::new(format!("cannot read {}: {e}", dir.display())))?;
    if files.is_empty() {
        return Err(CliError::new(format!(
            "{} holds no manifests; nothing applied or pruned",
            dir.display()
        )));
    }
    let mut docs = Vec::new();
    for f in files {
        let rel = f.strip_prefix(dir).unwrap_or(&f).display().to_string();
        for mut d in read_documents(std::slice::from_ref(&f))? {
            if let Some(meta) = d.value.get_mut("metadata").and_then(Value::as_object_mut) {
                let notes = meta.entry("annotations").or_insert_with(|| json!({}));
                if let Some(n) = notes.as_object_mut() {
                    n.insert(APPLY_SOURCE.into(), Value::String(rel.clone()));
                }
            }
            docs.push(d);
        }
    }
    Ok(docs)
}
