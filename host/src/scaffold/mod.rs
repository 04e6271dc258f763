//! `runner plugin new NAME --lang rust|python`: a plugin project that builds
//! and runs as it is, with a test of its logic, the WIT contract copied in,
//! and a one-stage pipeline file.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
}

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error(
        "plugin name \"{0}\" is not usable: use lowercase letters, digits and '-', starting with a letter (e.g. notify-slack)"
    )]
    Name(String),
    #[error("{} already exists; pick another name or --dir", .0.display())]
    Exists(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The contract, as this runner speaks it: the world, then each
/// capability's interfaces (from the capability list), and its version rules.
fn wit_files() -> impl Iterator<Item = (&'static str, &'static str)> {
    [
        ("world.wit", include_str!("../../../wit/world.wit")),
        ("VERSIONING.md", include_str!("../../../wit/VERSIONING.md")),
    ]
    .into_iter()
    .chain(
        crate::caps::IMPORTS
            .iter()
            .flat_map(|c| c.wit.iter().copied()),
    )
}

const RUST: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("rust/Cargo.toml.tmpl")),
    ("src/lib.rs", include_str!("rust/lib.rs.tmpl")),
    ("runner.toml", include_str!("rust/runner.toml.tmpl")),
    ("README.md", include_str!("rust/README.md.tmpl")),
    ("publish.sh", include_str!("rust/publish.sh.tmpl")),
    (".gitignore", "/target\n"),
];

const PYTHON: &[(&str, &str)] = &[
    ("app.py", include_str!("python/app.py.tmpl")),
    ("logic.py", include_str!("python/logic.py.tmpl")),
    ("test_logic.py", include_str!("python/test_logic.py.tmpl")),
    ("runner.toml", include_str!("python/runner.toml.tmpl")),
    ("README.md", include_str!("python/README.md.tmpl")),
    ("publish.sh", include_str!("python/publish.sh.tmpl")),
    (".gitignore", "*.wasm\n__pycache__/\n"),
];

fn valid_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}

/// Write the project for `name` into `dir` (which must not exist yet);
/// returns the files written, relative to `dir`.
pub fn create(name: &str, lang: Lang, dir: &Path) -> Result<Vec<PathBuf>, ScaffoldError> {
    if !valid_name(name) {
        return Err(ScaffoldError::Name(name.into()));
    }
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir.into()));
    }
    let files = match lang {
        Lang::Rust => RUST,
        Lang::Python => PYTHON,
    };
    let crate_name = name.replace('-', "_");
    let mut written = Vec::new();
    let wit = wit_files().map(|(f, text)| (format!("wit/{f}"), text));
    for (file, text) in files.iter().map(|(f, t)| (f.to_string(), *t)).chain(wit) {
        let path = dir.join(&file);
        let text = text
            .replace("__NAME__", name)
            .replace("__CRATE__", &crate_name);
        let write = |path: &Path| -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, &text)?;
            if path.extension().is_some_and(|e| e == "sh") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
            }
            Ok(())
        };
        write(&path).map_err(|source| ScaffoldError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(PathBuf::from(file));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_existing_dirs_kept() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            create("Bad_Name", Lang::Rust, &dir.path().join("x")),
            Err(ScaffoldError::Name(_))
        ));
        assert!(matches!(
            create("ok", Lang::Rust, dir.path()),
            Err(ScaffoldError::Exists(_))
        ));
        let files = create("notify-ops", Lang::Rust, &dir.path().join("n")).unwrap();
        assert!(files.contains(&PathBuf::from("wit/world.wit")));
        let lib = std::fs::read_to_string(dir.path().join("n/src/lib.rs")).unwrap();
        assert!(lib.contains("release/notify_ops.wasm"), "{lib}");
        assert!(!lib.contains("__"), "placeholders left in:\n{lib}");
    }

    #[test]
    fn every_wit_file_of_the_contract_is_copied() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut copied: Vec<String> = wit_files().map(|(f, _)| f.to_string()).collect();
        copied.sort();
        assert_eq!(copied, on_disk);
    }
}
