//! The architecture's rules, checked from the sources: which module may name which. Each
//! top-level module's `crate::` paths (outside comments) are read, and the rules the
//! README's "How it works" draws are asserted:
//!
//! - the modules form no cycle;
//! - handlers never touch engine types (`api` names no `orchestrator`, and no engine crate);
//! - the client never imports the server (`cli` names only the shared modules);
//! - backends decide nothing (`orchestrator` names no controller, service, policy or API);
//! - each engine crate is named in its backend's folder only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Per top-level module, the sources of its files (comment lines dropped).
fn sources() -> BTreeMap<String, Vec<(String, String)>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap().display().to_string();
            let top = rel
                .split('/')
                .next()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string();
            let code: String = std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            out.entry(top).or_default().push((rel, code));
        }
    }
    out
}

/// The top-level modules a piece of code names through `crate::`.
fn named(code: &str) -> BTreeSet<String> {
    code.match_indices("crate::")
        .map(|(i, _)| {
            code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect::<String>()
        })
        .filter(|m| !m.is_empty())
        .collect()
}

/// Each top-level module and the others it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    sources()
        .into_iter()
        .map(|(top, files)| {
            let mut deps: BTreeSet<String> = files.iter().flat_map(|(_, c)| named(c)).collect();
            deps.remove(&top);
            (top, deps)
        })
        .collect()
}

#[test]
fn the_modules_form_no_cycle() {
    let g = graph();
    // Depth-first, with the path so far: a module met again on its own path is a cycle.
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(at) = path.iter().position(|p| p == m) {
            panic!("a cycle of modules: {} -> {m}", path[at..].join(" -> "));
        }
        if !done.insert(m.to_string()) {
            return;
        }
        path.push(m.to_string());
        for d in g.get(m).into_iter().flatten() {
            visit(d, g, path, done);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for m in g.keys() {
        visit(m, &g, &mut Vec::new(), &mut done);
    }
}

#[test]
fn handlers_never_touch_engine_types() {
    for (file, code) in &sources()["api"] {
        assert!(
            !named(code).contains("orchestrator"),
            "{file} names the orchestrator: the service reads the engine for it"
        );
        for engine in ["bollard", "kube::", "k8s_openapi"] {
            assert!(!code.contains(engine), "{file} names {engine}");
        }
    }
}

#[test]
fn the_client_never_imports_the_server() {
    // The client and what it shares with the server, which is what a build without the
    // `server` feature compiles: none of them may name a module outside the set, so that
    // the client needs neither the controller nor an engine crate.
    let shared = ["agent", "cli", "document", "image", "manifests", "wire"];
    let sources = sources();
    for module in shared {
        for (file, code) in &sources[module] {
            for m in named(code) {
                assert!(
                    shared.contains(&m.as_str()),
                    "{file} names crate::{m}, a module of the server; the client and what it shares may name only {shared:?}"
                );
            }
        }
    }
    let lib = &sources["lib"][0].1;
    for top in sources.keys() {
        let declared = format!("pub mod {top};");
        if !shared.contains(&top.as_str()) && lib.contains(&declared) {
            // `testing` implies `server`.
            let gated = ["server", "testing"]
                .iter()
                .any(|f| lib.contains(&format!("#[cfg(feature = \"{f}\")]\n{declared}")));
            assert!(gated, "lib.rs declares {top} outside the server feature");
        }
    }
}

#[test]
fn backends_decide_nothing_and_each_engine_crate_stays_in_its_backend() {
    for (file, code) in &sources()["orchestrator"] {
        for m in ["controller", "service", "policy", "api", "store", "gitops"] {
            assert!(
                !named(code).contains(m),
                "{file} names crate::{m}: a backend carries out what the controller decided"
            );
        }
    }
    for (top, files) in sources() {
        for (file, code) in files {
            let docker = file.starts_with("orchestrator/docker/");
            let kubernetes = file.starts_with("orchestrator/kubernetes/");
            // The test support module imports the test image with bollard's types; this
            // file names the crates to look for them.
            let testing = top == "testing" || top == "layers";
            if !docker && !testing {
                assert!(!code.contains("bollard::"), "{file} names bollard");
            }
            if !kubernetes && top != "layers" {
                assert!(
                    !code.contains("kube::") && !code.contains("k8s_openapi::"),
                    "{file} names kube"
                );
            }
        }
    }
}
