//! `sluice new`: a handler project to start from, in Rust, Python or
//! JavaScript, with a build script, a sample event for `sluice invoke` and a
//! copy of the WIT contract this Sluice speaks.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

/// The languages `sluice new` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    /// Rust, built for wasm32-wasip2 with cargo.
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-js.
    Js,
}

/// One file of a project: where it goes and what it holds, before names are
/// filled in.
struct Template {
    path: &'static str,
    text: &'static str,
    executable: bool,
}

const fn file(path: &'static str, text: &'static str) -> Template {
    Template { path, text, executable: false }
}

const fn script(path: &'static str, text: &'static str) -> Template {
    Template { path, text, executable: true }
}

/// Every project gets these.
const COMMON: &[Template] = &[
    file("wit/plugin.wit", include_str!("../../wit/plugin.wit")),
    file("event.json", include_str!("scaffold/templates/event.json")),
    file("README.md", include_str!("scaffold/templates/README.md")),
];

const RUST: &[Template] = &[
    file("Cargo.toml", include_str!("scaffold/templates/rust/Cargo.toml")),
    file("src/lib.rs", include_str!("scaffold/templates/rust/src/lib.rs")),
    file(".gitignore", include_str!("scaffold/templates/rust/gitignore")),
    script("build.sh", include_str!("scaffold/templates/rust/build.sh")),
];

const PYTHON: &[Template] = &[
    file("app.py", include_str!("scaffold/templates/python/app.py")),
    file(".gitignore", include_str!("scaffold/templates/python/gitignore")),
    script("build.sh", include_str!("scaffold/templates/python/build.sh")),
];

const JS: &[Template] = &[
    file("app.js", include_str!("scaffold/templates/js/app.js")),
    file("package.json", include_str!("scaffold/templates/js/package.json")),
    file(".gitignore", include_str!("scaffold/templates/js/gitignore")),
    script("build.sh", include_str!("scaffold/templates/js/build.sh")),
];

impl Language {
    fn templates(self) -> &'static [Template] {
        match self {
            Language::Rust => RUST,
            Language::Python => PYTHON,
            Language::Js => JS,
        }
    }

    fn display(self) -> &'static str {
        match self {
            Language::Rust => "Rust",
            Language::Python => "Python",
            Language::Js => "JavaScript",
        }
    }
}

/// Creates `dir/name/` holding a `language` handler project; returns its path.
/// Refuses a name that is not a plain identifier, and a folder that exists.
pub fn create(name: &str, language: Language, dir: &Path) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let project = dir.join(name);
    if project.exists() {
        bail!("{} already exists; pick another name or remove it", project.display());
    }
    for t in COMMON.iter().chain(language.templates()) {
        let path = project.join(t.path);
        std::fs::create_dir_all(path.parent().expect("a file in the project"))
            .with_context(|| format!("cannot create {}", project.display()))?;
        std::fs::write(&path, fill(t.text, name, language))
            .with_context(|| format!("cannot write {}", path.display()))?;
        if t.executable {
            make_executable(&path)?;
        }
    }
    Ok(project)
}

/// What to do next, printed after a project is made.
pub fn next_steps(name: &str, project: &Path) -> String {
    let p = project.display();
    format!(
        "created {p}\n\n\
         build it (into {dist}):\n    {p}/build.sh\n\
         try it on the sample event, offline:\n    sluice invoke {dist}/{name}.wasm --event {p}/event.json\n\
         bind it in config.toml:\n    [handlers.{name}]\n    plugin = \"{name}.wasm\"\n    streams = [\"orders\"]\n    events = [\"order.created\"]\n",
        dist = project.parent().unwrap_or(Path::new(".")).join("dist").display(),
    )
}

/// Handler names become file, crate and config table names: letters,
/// digits, `-` and `_`, starting with a letter.
fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        bail!("{name:?} is not a handler name: use lowercase letters, digits, '-' and '_', starting with a letter");
    }
    Ok(())
}

fn fill(text: &str, name: &str, language: Language) -> String {
    text.replace("{{name}}", name)
        .replace("{{crate}}", &name.replace('-', "_"))
        .replace("{{language}}", language.display())
}

fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_plain_identifiers() {
        assert!(check_name("greeter").is_ok());
        assert!(check_name("order-audit_2").is_ok());
        for bad in ["", "Greeter", "2fa", "a b", "../x", "a/b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        for language in [Language::Rust, Language::Python, Language::Js] {
            for t in COMMON.iter().chain(language.templates()) {
                let text = fill(t.text, "my-handler", language);
                assert!(!text.contains("{{"), "{} ({language:?}) keeps a placeholder", t.path);
            }
        }
        assert!(fill(RUST[3].text, "my-handler", Language::Rust).contains("/my_handler.wasm\""));
    }
}
