//! Many agents at once, like `kubectl apply`: every document is checked first (parse,
//! validation, ownership, policy); if any fails nothing is written and the answer names
//! each bad document. Otherwise each is created or replaced and the answer says, per
//! agent, `created`, `configured` or `unchanged`; a dry run answers the same with a
//! readable diff and writes nothing. With [`Prune`], agents the apply's source declared
//! before and no longer does are deleted: the one prune of `hive apply --prune` and the
//! manifests directory alike.

use std::collections::{BTreeSet, HashSet};

use serde_json::{json, Value};

use super::agents::Admitted;
use super::{require_write, Service, ServiceError};
use crate::access::{Principal, Role};
use crate::agent::{shown_key, Agent};
use crate::store::Applied;
use crate::wire::{ApplyResult, Outcome};

/// Which agents a prune may delete: members of one set (marked with `annotation`, of the
/// value `set`), of the owners in scope, that the source no longer declares.
///
/// The owners in scope are never "everything the caller can see": an operator's own; an
/// admin's, the owners the documents name (the admin's own where they name none) and
/// those it names in `owners`, which it must when the prune spans more than one owner;
/// the manifests directory's, the owners the policy lets it declare agents for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prune {
    /// The annotation that marks the members of the set.
    pub annotation: &'static str,
    /// The value members carry; None: any (the manifests directory's own annotation,
    /// which only Hive writes and whose set is the whole directory).
    pub set: Option<String>,
    /// Owners an admin names to prune across.
    pub owners: BTreeSet<String>,
}

impl Prune {
    /// Whether `agent` belongs to this prune's set.
    fn has_member(&self, agent: &Agent) -> bool {
        match (agent.metadata.annotations.get(self.annotation), &self.set) {
            (Some(value), Some(set)) => value == set,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

impl Service {
    /// Checks every document, then (unless `dry_run`) creates or replaces each one, as
    /// `who`, and with `prune` deletes what the source no longer declares. Nothing is
    /// written if any document fails.
    pub async fn apply(
        &self,
        who: &Principal,
        documents: Vec<Value>,
        dry_run: bool,
        prune: Option<Prune>,
    ) -> Result<Vec<ApplyResult>, ServiceError> {
        let result = self.apply_documents(who, documents, dry_run, prune).await;
        self.audit_apply(who, dry_run, &result);
        result
    }

    /// One audit entry per agent an apply changed (`apply`) or pruned (`prune`), so each
    /// agent's history reads the same whichever way it was written. A refused apply is one
    /// entry; so is a request that changed nothing, except from Hive's own GitOps
    /// identity, whose unchanged files are not requests.
    fn audit_apply(
        &self,
        who: &Principal,
        dry_run: bool,
        result: &Result<Vec<ApplyResult>, ServiceError>,
    ) {
        let ok = Ok::<(), ServiceError>(());
        let mut audited = false;
        if let (Ok(results), false) = (result, dry_run) {
            for r in results.iter().filter(|r| r.result != Outcome::Unchanged) {
                let verb = if r.result == Outcome::Pruned {
                    "prune"
                } else {
                    "apply"
                };
                self.audit(who, verb, &r.name, &ok, 200);
                audited = true;
            }
        }
        let quiet = result.is_ok() && who.role == Role::System;
        if !audited && !quiet {
            let verb = if dry_run { "apply (dry run)" } else { "apply" };
            self.audit(who, verb, "-", result, 200);
        }
    }

    async fn apply_documents(
        &self,
        who: &Principal,
        values: Vec<Value>,
        dry_run: bool,
        prune: Option<Prune>,
    ) -> Result<Vec<ApplyResult>, ServiceError> {
        if !dry_run {
            self.writable()?;
        }
        require_write(who, "apply agents")?;
        let total = values.len();
        if total > MAX_DOCUMENTS {
            return Err(ServiceError::BadRequest(format!(
                "an apply takes at most {MAX_DOCUMENTS} documents; this one has {total}: split it"
            )));
        }
        // Registries are looked up before the admission lock, each (owner, image) once,
        // at once.
        let owner_image = |v: &Value| {
            let image = v.pointer("/spec/image").and_then(Value::as_str)?;
            let owner = v.pointer("/metadata/owner").and_then(Value::as_str);
            Some((owner.map(str::to_string), image.to_string()))
        };
        let pairs: BTreeSet<(Option<String>, String)> =
            values.iter().filter_map(owner_image).collect();
        // Each registry named may need a lookup (seconds, at worst): an apply names a few.
        let registries: BTreeSet<String> = pairs
            .iter()
            .filter_map(|(_, image)| crate::image::Reference::parse(image).ok())
            .map(|r| r.registry)
            .filter(|r| r != crate::image::DEFAULT_REGISTRY)
            .collect();
        if registries.len() > MAX_REGISTRIES {
            return Err(ServiceError::BadRequest(format!(
                "an apply names images from at most {MAX_REGISTRIES} registries besides Docker Hub; this one names {}: split it",
                registries.len()
            )));
        }
        let verdicts = futures_util::future::join_all(
            pairs
                .iter()
                .map(|(owner, image)| self.screen_image(who, owner.as_deref(), image)),
        )
        .await;
        let screened: std::collections::HashMap<
            (Option<String>, String),
            Result<(), ServiceError>,
        > = pairs.into_iter().zip(verdicts).collect();
        let _admission = self.admission.lock().await;

        let mut ready: Vec<Admitted> = Vec::new();
        let mut errors = Vec::new();
        let mut seen = HashSet::new();
        for (index, mut value) in values.into_iter().enumerate() {
            if let Some(Prune {
                annotation,
                set: Some(set),
                ..
            }) = &prune
            {
                // Every document of a pruning apply is a member of its set.
                if let Err(e) = mark_member(&mut value, annotation, set) {
                    errors.push(e.for_document(index, None));
                    continue;
                }
            }
            let hint = value
                .pointer("/metadata/name")
                .and_then(|n| n.as_str())
                .map(crate::agent::shown_key);
            let refused = owner_image(&value).and_then(|k| screened.get(&k)?.clone().err());
            if let Some(e) = refused {
                errors.push(e.for_document(index, hint));
                continue;
            }
            let checked = crate::document::typed::<Agent>(value)
                .map_err(ServiceError::from)
                .and_then(|agent| {
                    if !seen.insert(agent.metadata.name.clone()) {
                        return Err(ServiceError::invalid(
                            "metadata.name",
                            "appears twice in this apply",
                        ));
                    }
                    let pending: Vec<&Agent> = ready.iter().map(|a| &a.agent).collect();
                    self.prepare(who, agent, &pending)
                });
            match checked {
                Ok(r) => ready.push(r),
                Err(e) => errors.push(e.for_document(index, hint)),
            }
        }
        if !errors.is_empty() {
            return Err(ServiceError::InvalidDocuments {
                total,
                documents: errors,
            });
        }

        let declared: BTreeSet<String> = ready
            .iter()
            .map(|a| a.agent.metadata.name.clone())
            .collect();
        let scope = match &prune {
            Some(prune) => {
                let named: BTreeSet<String> = ready
                    .iter()
                    .filter_map(|a| a.agent.metadata.owner.clone())
                    .collect();
                Some(self.prune_scope(who, prune, named)?)
            }
            None => None,
        };
        let mut results = Vec::new();
        let mut changed = Vec::new();
        for Admitted {
            agent,
            existing,
            take_over,
        } in ready
        {
            let name = agent.metadata.name.clone();
            if dry_run {
                let (result, diff) = would(&agent, existing.as_ref().map(|r| &r.agent));
                results.push(ApplyResult {
                    name,
                    result,
                    generation: existing.map(|r| r.agent.metadata.generation),
                    resource_version: None,
                    diff,
                });
                continue;
            }
            let was_idle = existing
                .as_ref()
                .is_some_and(|r| r.internal.idle_since.is_some());
            let (record, applied) = self.store.apply(agent, take_over.as_deref())?;
            if was_idle && applied == Applied::Updated && record.internal.idle_since.is_none() {
                self.resumed(&record, "change of its manifest");
            }
            if let Some(from) = &take_over {
                tracing::warn!(agent = %name, previous_owner = %from, "an admin took over another owner's agent");
            }
            let result = match applied {
                Applied::Created => Outcome::Created,
                Applied::Updated => Outcome::Configured,
                Applied::Unchanged => Outcome::Unchanged,
            };
            if applied != Applied::Unchanged {
                changed.push(name.clone());
            }
            results.push(ApplyResult {
                name,
                result,
                generation: Some(record.agent.metadata.generation),
                resource_version: record.agent.metadata.resource_version,
                diff: None,
            });
        }
        if let (Some(prune), Some(scope)) = (prune, scope) {
            for name in self.prune_unlocked(&prune, &scope, &declared, dry_run)? {
                if !dry_run {
                    changed.push(name.clone());
                }
                results.push(ApplyResult {
                    name,
                    result: Outcome::Pruned,
                    generation: None,
                    resource_version: None,
                    diff: None,
                });
            }
        }
        let changed: Vec<&str> = changed.iter().map(String::as_str).collect();
        self.commit(&changed).await?;
        Ok(results)
    }

    /// Deletes the members of `prune`'s set, of the owners in the caller's scope, that
    /// are not in `declared` (the manifests directory's prune, across all its files).
    /// Audited.
    pub async fn prune(
        &self,
        who: &Principal,
        prune: Prune,
        declared: &BTreeSet<String>,
    ) -> Result<Vec<String>, ServiceError> {
        let result = async {
            self.writable()?;
            require_write(who, "delete agents")?;
            let scope = self.prune_scope(who, &prune, BTreeSet::new())?;
            let pruned = {
                let _admission = self.admission.lock().await;
                self.prune_unlocked(&prune, &scope, declared, false)?
            };
            let names: Vec<&str> = pruned.iter().map(String::as_str).collect();
            self.commit(&names).await?;
            Ok(pruned)
        }
        .await;
        match &result {
            Ok(pruned) => {
                for name in pruned {
                    self.audit(who, "prune", name, &Ok::<(), ServiceError>(()), 200);
                }
            }
            Err(_) => self.audit(who, "prune", "-", &result, 200),
        }
        result
    }

    /// The owners whose agents a prune by `who` may delete (see [`Prune`]): `named` are
    /// the owners its documents name.
    fn prune_scope(
        &self,
        who: &Principal,
        prune: &Prune,
        named: BTreeSet<String>,
    ) -> Result<Owners, ServiceError> {
        match who.role {
            Role::System => Ok(Owners::GitOps),
            Role::Admin => {
                let mut scope = named;
                if scope.is_empty() {
                    scope.insert(who.owner.clone());
                }
                let unnamed: Vec<&String> = scope
                    .iter()
                    .filter(|o| !prune.owners.contains(*o))
                    .collect();
                if scope.len() + prune.owners.len() > 1 && !unnamed.is_empty() {
                    let all: BTreeSet<&String> = scope.iter().chain(&prune.owners).collect();
                    let all: Vec<&str> = all.into_iter().map(String::as_str).collect();
                    return Err(ServiceError::invalid(
                        "pruneOwners",
                        format!(
                            "this prune spans the agents of owners {}: name each owner to prune across owners (pruneOwners={})",
                            all.join(", "),
                            all.join(",")
                        ),
                    ));
                }
                scope.extend(prune.owners.iter().cloned());
                Ok(Owners::These(scope))
            }
            Role::Operator | Role::Viewer => {
                if let Some(other) = prune.owners.iter().find(|o| **o != who.owner) {
                    return Err(ServiceError::Forbidden(format!(
                        "only an admin key may prune the agents of another owner ({})",
                        shown_key(other)
                    )));
                }
                Ok(Owners::These(BTreeSet::from([who.owner.clone()])))
            }
        }
    }

    /// The prune itself, under the admission lock the caller holds.
    fn prune_unlocked(
        &self,
        prune: &Prune,
        scope: &Owners,
        declared: &BTreeSet<String>,
        dry_run: bool,
    ) -> Result<Vec<String>, ServiceError> {
        let mut pruned = Vec::new();
        let snapshot = self.store.snapshot();
        for entry in snapshot.agents.values() {
            let a = &entry.record.agent;
            let owner = a.metadata.owner.as_deref().unwrap_or_default();
            let in_scope = match scope {
                Owners::These(owners) => owners.contains(owner),
                Owners::GitOps => self.policy.gitops_may_name(owner),
            };
            if !in_scope
                || !prune.has_member(a)
                || a.is_terminating()
                || declared.contains(&a.metadata.name)
            {
                continue;
            }
            if !dry_run {
                self.store.mark_deleted(&a.metadata.name)?;
            }
            pruned.push(a.metadata.name.clone());
        }
        Ok(pruned)
    }
}

/// The owners whose agents a prune may delete.
enum Owners {
    These(BTreeSet<String>),
    /// Those the manifests directory may declare agents for.
    GitOps,
}

/// Marks a document as a member of `set`; a document that says it belongs to another
/// set is refused (it would be pruned by that set's next apply, or prune this one's).
fn mark_member(doc: &mut Value, annotation: &str, set: &str) -> Result<(), ServiceError> {
    let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut) else {
        return Ok(()); // typed checking reports it
    };
    let notes = meta
        .entry("annotations")
        .or_insert_with(|| Value::Object(Default::default()));
    let Some(notes) = notes.as_object_mut() else {
        return Ok(()); // typed checking reports it
    };
    match notes.get(annotation) {
        Some(Value::String(v)) if v == set => Ok(()),
        Some(_) => Err(ServiceError::invalid(
            format!("metadata.annotations.{annotation}"),
            "names another apply set than the one this apply prunes",
        )),
        None => {
            notes.insert(annotation.to_string(), Value::String(set.to_string()));
            Ok(())
        }
    }
}

/// What an apply of `agent` over `old` would do, with the diff.
fn would(agent: &Agent, old: Option<&Agent>) -> (Outcome, Option<String>) {
    let new_text = declared(agent);
    match old {
        None => (Outcome::Created, Some(diff("", &new_text))),
        Some(old) => {
            let old_text = declared(old);
            if old_text == new_text {
                (Outcome::Unchanged, None)
            } else {
                (Outcome::Configured, Some(diff(&old_text, &new_text)))
            }
        }
    }
}

/// The declared part of an agent (what an apply can change), as YAML.
fn declared(a: &Agent) -> String {
    let m = &a.metadata;
    let mut meta = json!({"name": m.name});
    if let Some(owner) = &m.owner {
        meta["owner"] = json!(owner);
    }
    if !m.labels.is_empty() {
        meta["labels"] = json!(m.labels);
    }
    if !m.annotations.is_empty() {
        meta["annotations"] = json!(m.annotations);
    }
    let doc = json!({"metadata": meta, "spec": a.spec});
    serde_yaml::to_string(&doc).unwrap_or_default()
}

/// The most documents one apply takes: its work (and a dry run's diffs) stay bounded.
pub const MAX_DOCUMENTS: usize = 1000;
/// The most registries (besides Docker Hub) one apply's images come from: each may be
/// looked up, and an owner has few lookups at once.
pub const MAX_REGISTRIES: usize = 16;
/// The largest diff table (lines before times lines after) a dry run computes; past it the
/// diff shows every line removed and added.
const MAX_DIFF_CELLS: usize = 1 << 20;

/// A line diff: unchanged lines indented, removed ones `- `, added ones `+ `. Linear in
/// its output past [`MAX_DIFF_CELLS`], where it says everything changed.
pub fn diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    if (a.len() + 1).saturating_mul(b.len() + 1) > MAX_DIFF_CELLS {
        let mut out = String::new();
        for l in &a {
            out += &format!("- {l}\n");
        }
        for l in &b {
            out += &format!("+ {l}\n");
        }
        return out;
    }
    // Longest common subsequence, table from the ends.
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out += &format!("  {}\n", a[i]);
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out += &format!("- {}\n", a[i]);
            i += 1;
        } else {
            out += &format!("+ {}\n", b[j]);
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_mark_removed_and_added_lines() {
        let d = diff("a\nb\nc\n", "a\nB\nc\nd\n");
        assert_eq!(d, "  a\n- b\n+ B\n  c\n+ d\n");
        assert_eq!(diff("", "x\n"), "+ x\n");
    }

    #[test]
    fn a_huge_diff_is_linear_and_says_everything_changed() {
        let old: String = (0..20_000).map(|i| format!("a{i}\n")).collect();
        let new: String = (0..20_000).map(|i| format!("b{i}\n")).collect();
        let started = std::time::Instant::now();
        let d = diff(&old, &new);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(d.lines().count(), 40_000);
        assert!(d.starts_with("- a0\n") && d.ends_with("+ b19999\n"));
    }
}
