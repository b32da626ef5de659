//! The worker's catalog file: which tables exist and where their Parquet data lives.
//!
//! Loaded and validated once at start, before the worker reports itself serving, so a typo in a
//! table path is a start-up error naming the file and field, never a failed query later. A
//! standby worker gets the same document in a claim's body instead ([`Catalog::parse`]); there
//! relative locations resolve against the worker's working directory, since no file holds it,
//! so a claimer that has a file sends [`CatalogFile::document_of`], whose locations are absolute.
//!
//! ```yaml
//! catalog: quiver        # default "quiver"
//! schema: public         # default "public"
//! tables:
//!   - name: lineitem
//!     location: lineitem.parquet   # file or directory, relative to this file, or a URL
//!     hot: true                    # default false: load into memory at warm-up
//! ```
//!
//! Locations may be local paths or object-store URLs (`s3://`, `gs://`, `az://`, `http(s)://`),
//! whose credentials come from the usual environment variables of each cloud.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use url::Url;

pub use quiver_core::protocol::{DEFAULT_CATALOG, DEFAULT_SCHEMA};

/// The catalog file as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    /// Catalog name (default `quiver`).
    #[serde(default = "default_catalog")]
    pub catalog: String,
    /// Schema name (default `public`).
    #[serde(default = "default_schema")]
    pub schema: String,
    /// The tables, at least one.
    pub tables: Vec<TableEntry>,
}

/// One table in the catalog file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableEntry {
    /// SQL name of the table.
    pub name: String,
    /// Parquet file or directory: a path (relative to the catalog file) or a URL.
    pub location: String,
    /// Load the table into memory at warm-up (default false).
    #[serde(default)]
    pub hot: bool,
}

fn default_catalog() -> String {
    DEFAULT_CATALOG.to_owned()
}

fn default_schema() -> String {
    DEFAULT_SCHEMA.to_owned()
}

/// A validated catalog: every location resolved to a URL.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Catalog name.
    pub catalog: String,
    /// Schema name.
    pub schema: String,
    /// Tables, in file order.
    pub tables: Vec<Table>,
}

/// A validated table.
#[derive(Debug, Clone)]
pub struct Table {
    /// SQL name.
    pub name: String,
    /// Resolved location (`file://` for local paths).
    pub url: Url,
    /// Load into memory at warm-up.
    pub hot: bool,
}

/// Why a catalog file was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The file could not be read.
    #[error("cannot read catalog file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not match the catalog format (serde names the line and field).
    #[error("invalid catalog {origin}: {source}")]
    Parse {
        /// Where the document came from: `file PATH` or a claim.
        origin: String,
        /// Where and why.
        #[source]
        source: serde_yaml::Error,
    },
    /// A field has a value the worker cannot use.
    #[error("invalid catalog {origin}: {field}: {reason}")]
    Invalid {
        /// Where the document came from: `file PATH` or a claim.
        origin: String,
        /// The field, e.g. `tables[2].location`.
        field: String,
        /// Why.
        reason: String,
    },
    /// DataFusion refused a table while warming up (unreadable Parquet, missing object store).
    #[error("cannot register table {table} from {url}: {source}")]
    Register {
        /// The table.
        table: String,
        /// Its location.
        url: Url,
        /// DataFusion's error.
        #[source]
        source: Box<datafusion::error::DataFusionError>,
    },
}

impl CatalogFile {
    /// Reads and parses the catalog file at `path` (not validated).
    pub fn read(path: &Path) -> Result<Self, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_yaml::from_str(&text).map_err(|source| CatalogError::Parse {
            origin: file_origin(path),
            source,
        })
    }

    /// The document of the catalog file at `path` for a claim's body: the same tables, with
    /// relative local locations made absolute against the file's directory, because the
    /// claimed worker resolves them against its own working directory.
    pub fn document_of(path: &Path) -> Result<String, CatalogError> {
        let mut file = Self::read(path)?;
        let base = base_of(path);
        for table in &mut file.tables {
            if !is_url(&table.location) && Path::new(&table.location).is_relative() {
                let joined = base.join(&table.location);
                table.location = std::path::absolute(&joined)
                    .unwrap_or(joined)
                    .to_string_lossy()
                    .into_owned();
            }
        }
        Ok(serde_yaml::to_string(&file).expect("a catalog serialises"))
    }
}

/// How errors name a catalog file.
fn file_origin(path: &Path) -> String {
    format!("file {}", path.display())
}

/// The directory relative locations of the file at `path` resolve against.
fn base_of(path: &Path) -> PathBuf {
    path.parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

impl Catalog {
    /// Reads, parses and validates the catalog file at `path`.
    pub fn load(path: &Path) -> Result<Self, CatalogError> {
        let file = CatalogFile::read(path)?;
        Self::validate(file, &file_origin(path), &base_of(path))
    }

    /// Parses and validates a catalog document (a catalog file's YAML, or JSON) that came from
    /// `origin` (for errors); relative local locations resolve against `base`.
    pub fn parse(text: &str, origin: &str, base: &Path) -> Result<Self, CatalogError> {
        let file: CatalogFile =
            serde_yaml::from_str(text).map_err(|source| CatalogError::Parse {
                origin: origin.to_owned(),
                source,
            })?;
        Self::validate(file, origin, base)
    }

    fn validate(file: CatalogFile, origin: &str, base: &Path) -> Result<Self, CatalogError> {
        let invalid = |field: String, reason: String| CatalogError::Invalid {
            origin: origin.to_owned(),
            field,
            reason,
        };
        for (field, value) in [("catalog", &file.catalog), ("schema", &file.schema)] {
            if !is_identifier(value) {
                return Err(invalid(
                    field.to_owned(),
                    format!("{value:?} is not a valid SQL identifier"),
                ));
            }
        }
        if file.tables.is_empty() {
            return Err(invalid(
                "tables".into(),
                "at least one table is required".into(),
            ));
        }
        let mut seen = HashSet::new();
        let mut tables = Vec::with_capacity(file.tables.len());
        for (i, entry) in file.tables.into_iter().enumerate() {
            if !is_identifier(&entry.name) {
                return Err(invalid(
                    format!("tables[{i}].name"),
                    format!("{:?} is not a valid SQL identifier", entry.name),
                ));
            }
            if !seen.insert(entry.name.to_ascii_lowercase()) {
                return Err(invalid(
                    format!("tables[{i}].name"),
                    format!("table {:?} is declared twice", entry.name),
                ));
            }
            let url = resolve_location(&entry.location, base)
                .map_err(|reason| invalid(format!("tables[{i}].location"), reason))?;
            tables.push(Table {
                name: entry.name,
                url,
                hot: entry.hot,
            });
        }
        Ok(Self {
            catalog: file.catalog,
            schema: file.schema,
            tables,
        })
    }
}

/// Lower-case-safe SQL identifier: letters, digits and `_`, not starting with a digit.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// True when `location` is a URL rather than a local path (a single letter before `:` is a
/// Windows drive, not a scheme).
fn is_url(location: &str) -> bool {
    Url::parse(location).is_ok_and(|url| url.scheme().len() > 1)
}

/// Turns a location into a URL: URLs with a known scheme pass through, anything else is a local
/// path relative to `base` (the catalog file's directory), which must exist.
fn resolve_location(location: &str, base: &Path) -> Result<Url, String> {
    if location.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if let Ok(url) = Url::parse(location) {
        match url.scheme() {
            "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" | "http" | "https" => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(format!("{location:?} has no bucket or host"));
                }
                return Ok(url);
            }
            "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|_| format!("{location:?} is not a valid file URL"))?;
                return local_url(&path);
            }
            // A single letter is a Windows drive, not a scheme; other schemes are not supported.
            s if s.len() > 1 => {
                return Err(format!(
                    "unsupported scheme {s:?}; use a path, file://, s3://, gs://, az:// or http(s)://"
                ));
            }
            _ => {}
        }
    }
    local_url(&base.join(location))
}

fn local_url(path: &Path) -> Result<Url, String> {
    let path = path
        .canonicalize()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let url = if path.is_dir() {
        Url::from_directory_path(&path)
    } else {
        Url::from_file_path(&path)
    };
    url.map_err(|_| format!("{} cannot be expressed as a URL", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("catalog.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn loads_relative_paths_and_urls() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.parquet"), b"").unwrap();
        let path = write(
            dir.path(),
            "tables:\n  - {name: t, location: t.parquet, hot: true}\n  - {name: u, location: 's3://bucket/u/'}\n",
        );
        let c = Catalog::load(&path).unwrap();
        assert_eq!(c.catalog, "quiver");
        assert_eq!(c.schema, "public");
        assert_eq!(c.tables[0].url.scheme(), "file");
        assert!(c.tables[0].hot);
        assert_eq!(c.tables[1].url.as_str(), "s3://bucket/u/");
    }

    #[test]
    fn missing_file_names_field_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "tables:\n  - {name: t, location: nope.parquet}\n",
        );
        let err = Catalog::load(&path).unwrap_err().to_string();
        assert!(err.contains("catalog.yaml"), "{err}");
        assert!(err.contains("tables[0].location"), "{err}");
        assert!(err.contains("nope.parquet"), "{err}");
    }

    #[test]
    fn a_document_resolves_against_the_given_base_and_json_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.parquet"), b"").unwrap();
        let json = r#"{"catalog":"sales","schema":"public","tables":[{"name":"t","location":"t.parquet"}]}"#;
        let c = Catalog::parse(json, "claim", dir.path()).unwrap();
        assert_eq!(c.catalog, "sales");
        assert_eq!(c.tables[0].url.scheme(), "file");
        let err = Catalog::parse(json, "claim", &dir.path().join("elsewhere"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid catalog claim"), "{err}");
        assert!(err.contains("tables[0].location"), "{err}");
    }

    #[test]
    fn a_files_document_has_absolute_local_locations() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.parquet"), b"").unwrap();
        let path = write(
            dir.path(),
            "tables:\n  - {name: t, location: t.parquet, hot: true}\n  - {name: u, location: 's3://b/u/'}\n",
        );
        let document = CatalogFile::document_of(&path).unwrap();
        // Resolved from anywhere: the base given no longer matters for local tables.
        let c = Catalog::parse(&document, "claim", Path::new("/")).unwrap();
        assert_eq!(
            c.tables[0].url.to_file_path().unwrap(),
            dir.path().join("t.parquet").canonicalize().unwrap()
        );
        assert!(c.tables[0].hot);
        assert_eq!(c.tables[1].url.as_str(), "s3://b/u/");
    }

    #[test]
    fn unknown_field_is_refused_with_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "tables:\n  - {name: t, location: x, colour: red}\n",
        );
        let err = Catalog::load(&path).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn duplicate_and_bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.parquet"), b"").unwrap();
        let dup = write(
            dir.path(),
            "tables:\n  - {name: t, location: t.parquet}\n  - {name: T, location: t.parquet}\n",
        );
        assert!(
            Catalog::load(&dup)
                .unwrap_err()
                .to_string()
                .contains("declared twice")
        );
        let bad = write(
            dir.path(),
            "tables:\n  - {name: 'a b', location: t.parquet}\n",
        );
        assert!(
            Catalog::load(&bad)
                .unwrap_err()
                .to_string()
                .contains("tables[0].name")
        );
        let empty = write(dir.path(), "tables: []\n");
        assert!(
            Catalog::load(&empty)
                .unwrap_err()
                .to_string()
                .contains("at least one")
        );
        let scheme = write(
            dir.path(),
            "tables:\n  - {name: t, location: 'ftp://h/x'}\n",
        );
        assert!(
            Catalog::load(&scheme)
                .unwrap_err()
                .to_string()
                .contains("unsupported scheme")
        );
    }
}
