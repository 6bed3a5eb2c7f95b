//! `portcullis check`: compile files of Kubernetes objects and report every status, exiting
//! non-zero when one of our objects is not Accepted/ResolvedRefs/Programmed. A validator to
//! run in CI before manifests are applied.

use std::path::PathBuf;

use anyhow::Result;

use crate::compile::compile;
use crate::objects::load_paths;
use crate::status_table;

/// How `check` prints the statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Yaml,
}

/// What `check` found.
#[derive(Debug)]
pub struct Report {
    /// For stdout: the table or the YAML.
    pub statuses: String,
    /// For stderr: objects the compiler did not look at.
    pub notes: Vec<String>,
    /// Rows with a problem (0: the check passes).
    pub problems: usize,
}

/// Loads `paths`, compiles them and reports. Errors are files that cannot be read or parsed.
pub fn check(paths: &[PathBuf], format: Format) -> Result<Report> {
    let loaded = load_paths(paths)?;
    let output = compile(&loaded.input);
    let problems = status_table::problem_count(&output);
    let statuses = match format {
        Format::Table => {
            let mut text = status_table::render(&output);
            text.push_str(&summary(problems));
            text
        }
        Format::Yaml => status_table::to_yaml(&output)?,
    };
    Ok(Report {
        statuses,
        notes: status_table::notes(&loaded, &output),
        problems,
    })
}

fn summary(problems: usize) -> String {
    match problems {
        0 => "\nno problems\n".to_string(),
        1 => "\n1 object with a problem\n".to_string(),
        n => format!("\n{n} objects with problems\n"),
    }
}
