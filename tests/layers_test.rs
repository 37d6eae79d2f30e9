//! The core's layers (see src/lib.rs) only use the layers below them: a file importing from a
//! layer above its own fails here, naming both, before the tree stops showing the architecture.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

/// Layers from the bottom up, with the files at the root where they sit between them (the
/// errors are the protocol's: a server's error reply is one).
const ORDER: &[&[&str]] = &[
    &["fork", "seconds"],
    &["protocol", "error"],
    &["transport"],
    &["backend"],
    &["routing", "metrics"],
    &["migration"],
    &["healing"],
    &["multi_store"],
];

fn rank(module_path: &str) -> Option<usize> {
    let top = module_path.split("::").next()?;
    ORDER.iter().position(|layer| layer.contains(&top))
}

/// Each `crate::…` path a file names outside its tests.
fn imports(source: &str) -> BTreeSet<String> {
    let code = source.split("#[cfg(test)]").next().unwrap_or(source);
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end > 0 {
            found.insert(rest[..end].to_string());
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("src/ is readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_file_imports_from_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src/");
        let module = relative
            .with_extension("")
            .to_string_lossy()
            .replace('/', "::");
        if module == "lib" {
            continue;
        }
        let own = rank(&module).unwrap_or_else(|| {
            panic!("{module} is in no layer: add it to ORDER or a layer folder")
        });
        let source = fs::read_to_string(file).expect("source is readable");
        for import in imports(&source) {
            let theirs = rank(&import)
                .unwrap_or_else(|| panic!("{module} imports crate::{import}, in no layer"));
            if theirs > own {
                upward.push(format!("{module} -> {import}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports from a higher layer: {upward:#?}"
    );
    assert!(
        files.len() > 30,
        "only {} files found under src/",
        files.len()
    );
}

/// The module a file defines: `backend/cluster/mod.rs` is `backend::cluster`.
fn module_of(src: &Path, file: &Path) -> String {
    let module = file
        .strip_prefix(src)
        .expect("under src/")
        .with_extension("")
        .to_string_lossy()
        .replace('/', "::");
    module
        .strip_suffix("::mod")
        .map(str::to_string)
        .unwrap_or(module)
}

/// The modules a file's `crate::…` paths lead into, braces (`crate::a::{b, c}`) included.
fn imported_modules(source: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let code = source.split("#[cfg(test)]").next().unwrap_or(source);
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let path = rest[..end].trim_end_matches(':');
        let mut candidates: Vec<String> = vec![path.to_string()];
        if rest[end..].starts_with('{') {
            let group = &rest[end + 1..rest[end..].find('}').map_or(end + 1, |i| end + i)];
            for item in group.split(',') {
                let item = item.trim().split("::").next().unwrap_or("");
                candidates.push(format!("{path}::{item}"));
            }
        }
        for candidate in candidates {
            let parts: Vec<&str> = candidate.split("::").collect();
            if let Some(module) = (1..=parts.len())
                .rev()
                .map(|k| parts[..k].join("::"))
                .find(|prefix| modules.contains(prefix))
            {
                found.insert(module);
            }
        }
    }
    found
}

#[test]
fn no_files_import_each_other_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let edges: Vec<(String, BTreeSet<String>)> = files
        .iter()
        .map(|file| {
            let module = module_of(&src, file);
            let source = fs::read_to_string(file).expect("source is readable");
            let mut imports = imported_modules(&source, &modules);
            imports.remove(&module);
            (module, imports)
        })
        .collect();
    let imports_of = |module: &str| {
        edges
            .iter()
            .find(|(m, _)| m == module)
            .map(|(_, imports)| imports.clone())
            .unwrap_or_default()
    };
    // A walk from each module: reaching it again is a circle, printed as the path that closed it.
    for (start, _) in &edges {
        let mut stack: Vec<Vec<String>> = vec![vec![start.clone()]];
        let mut seen = BTreeSet::new();
        while let Some(path) = stack.pop() {
            let last = path.last().expect("a path has a module").clone();
            for next in imports_of(&last) {
                assert!(
                    next != *start,
                    "import circle: {} -> {next}",
                    path.join(" -> ")
                );
                if seen.insert(next.clone()) {
                    let mut longer = path.clone();
                    longer.push(next);
                    stack.push(longer);
                }
            }
        }
    }
    assert!(modules.contains("backend::store") && modules.contains("backend::cluster"));
}
