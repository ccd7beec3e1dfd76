//! Configuration: `vitalake.toml` (optional) plus environment overrides.
//!
//! Secrets never live in the file: cloud credentials come from the environment variables the Azure
//! SDKs already know (`AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_CLIENT_ID`/`AZURE_CLIENT_SECRET`/
//! `AZURE_TENANT_ID`, or a managed identity), read by `object_store` when a store is built.
//!
//! ```toml
//! [lake]
//! # A local folder, or abfss://<container>@<account>.dfs.core.windows.net/<path> on ADLS Gen2.
//! root = "./lake"
//! # On abfss://, a killed run gives the lake up this many seconds after its last lease renewal.
//! lease_seconds = 60
//!
//! [ingest]
//! # Resources larger than this go to quarantine (rule `size`) instead of bronze.
//! max_resource_bytes = 16777216
//! # A commit to the lake happens after this many records or this many bytes of raw JSON.
//! chunk_records = 50000
//! chunk_bytes = 8388608
//! # ViewDefinitions, one per silver table (built-in views are used if the folder is missing).
//! views = "profiles/views"
//!
//! [validate]
//! # Hold resources to the profiles in this folder (structure is always checked).
//! enabled = true
//! profiles = "profiles"
//! # Observations coded LOINC 85354-9 are held to the R4 `bp` profile; Patients to US Core Patient.
//! bp_panels_to_bp_profile = true
//! patients_to_us_core = false
//!
//! [validate.policy]
//! # Per rule: "quarantine" or "warn", overriding the severity the profile gives.
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the default configuration file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "vitalake.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid value {value:?} in environment variable {var}: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub lake: LakeConfig,
    pub ingest: IngestConfig,
    pub validate: crate::validate::ValidateConfig,
    pub db: DbConfig,
    pub serve: crate::serve::ServeConfig,
    pub maintain: MaintainConfig,
}

/// `[maintain]`: what `vitalake maintain` does by default.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MaintainConfig {
    /// VACUUM keeps files unreferenced for less than this (`7d`, `36h`); under `1d` needs --force.
    pub retention: String,
    /// Columns to Z-ORDER by, per table path (`folder/*` for every table in a folder). Given,
    /// it replaces the default: blood pressure and heart rate by patient, the Event Hubs bronze
    /// tables by partition key (the patient).
    ///
    /// Why not patient and time: delta-rs interleaves the bits of the first 16 bytes of each
    /// column. Patient ids that share a prefix (`MRN00…`, `bench-0…`) differ only in later bytes,
    /// whose bits land below the timestamp's, so the files come out ordered by time and a look-up
    /// by patient reads every file (measured in BENCHMARKS.md, issue 8). Clustered by patient
    /// alone, a look-up reads one row group; the daily aggregate scans everything either way.
    pub zorder: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for MaintainConfig {
    fn default() -> Self {
        let by = |columns: &[&str]| columns.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        MaintainConfig {
            retention: "7d".into(),
            zorder: [
                ("silver/fhir/blood_pressure", by(&["patient_id"])),
                ("silver/fhir/heart_rate", by(&["patient_id"])),
                ("bronze/eventhubs/*", by(&["partition_key"])),
            ]
            .into_iter()
            .map(|(path, columns)| (path.to_string(), columns))
            .collect(),
        }
    }
}

/// `[db]`: the hospital databases `vitalake ingest db` extracts.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DbConfig {
    /// `[[db.sources]]`, one per database.
    pub sources: Vec<crate::ingest::db::SourceConfig>,
    /// A TOML file of data-quality expectations (`[[expectation]]`), checked after each run.
    pub expectations: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LakeConfig {
    /// Lake root: a local folder or an `abfss://` URL. Overridden by `VITALAKE_LAKE_ROOT` and `--lake`.
    pub root: String,
    /// On an `abfss://` lake, a run holds a lease that its holder renews; one that stops renewing
    /// (a killed run) gives the lake up after this many seconds.
    pub lease_seconds: usize,
}

impl Default for LakeConfig {
    fn default() -> Self {
        LakeConfig {
            root: "./lake".into(),
            lease_seconds: crate::lake::lease::DEFAULT_LEASE_TTL.as_secs() as usize,
        }
    }
}

impl LakeConfig {
    /// Opens the lake this section names.
    pub fn open(&self) -> Result<crate::lake::Lake, crate::lake::LakeError> {
        Ok(crate::lake::Lake::open(&self.root)?
            .with_lease_ttl(std::time::Duration::from_secs(self.lease_seconds as u64)))
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Larger resources are quarantined (rule `size`): a 50 MB string in a Patient is a broken feed,
    /// and one such row would slow every later scan of its bronze table.
    pub max_resource_bytes: usize,
    /// Records per lake commit; bounds memory while a 1 GB NDJSON file streams through.
    pub chunk_records: usize,
    /// Raw JSON bytes per lake commit.
    pub chunk_bytes: usize,
    /// The ViewDefinitions that define the silver tables (one `*.json` each); when the folder does
    /// not exist, the views built into vitalake are used.
    pub views: String,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_resource_bytes: 16 << 20,
            chunk_records: 50_000,
            chunk_bytes: 8 << 20,
            views: "profiles/views".into(),
        }
    }
}

impl Config {
    /// Loads `path` (which must exist), or `./vitalake.toml` if present, or the defaults; then
    /// applies the environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => Self::from_file(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                Self::from_file(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => Config::default(),
        };
        config.apply_env(|var| std::env::var(var).ok())?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Environment overrides, `VITALAKE_<SECTION>_<KEY>`. `lookup` is injected so tests need not
    /// touch the process environment.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        if let Some(root) = lookup("VITALAKE_LAKE_ROOT") {
            self.lake.root = root;
        }
        if let Some(views) = lookup("VITALAKE_INGEST_VIEWS") {
            self.ingest.views = views;
        }
        if let Some(profiles) = lookup("VITALAKE_VALIDATE_PROFILES") {
            self.validate.profiles = profiles;
        }
        if let Some(enabled) = lookup("VITALAKE_VALIDATE_ENABLED") {
            self.validate.enabled =
                enabled
                    .parse()
                    .map_err(|e: std::str::ParseBoolError| ConfigError::Env {
                        var: "VITALAKE_VALIDATE_ENABLED",
                        value: enabled.clone(),
                        reason: e.to_string(),
                    })?;
        }
        let numbers: [(&'static str, &mut usize); 4] = [
            ("VITALAKE_LAKE_LEASE_SECONDS", &mut self.lake.lease_seconds),
            (
                "VITALAKE_INGEST_MAX_RESOURCE_BYTES",
                &mut self.ingest.max_resource_bytes,
            ),
            (
                "VITALAKE_INGEST_CHUNK_RECORDS",
                &mut self.ingest.chunk_records,
            ),
            ("VITALAKE_INGEST_CHUNK_BYTES", &mut self.ingest.chunk_bytes),
        ];
        for (var, slot) in numbers {
            if let Some(value) = lookup(var) {
                *slot = value
                    .parse()
                    .map_err(|e: std::num::ParseIntError| ConfigError::Env {
                        var,
                        value: value.clone(),
                        reason: e.to_string(),
                    })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_configuration_example_parses() {
        let readme = include_str!("../README.md");
        let start = readme
            .find("```toml\n[lake]")
            .expect("README has the configuration example")
            + 8;
        let example = &readme[start..start + readme[start..].find("```").unwrap()];
        let config: Config = toml::from_str(example).unwrap();
        assert_eq!(config.db.sources.len(), 2);
        assert_eq!(
            config.db.sources[0]
                .cursors
                .get("events")
                .map(String::as_str),
            Some("updated_at")
        );
        assert_eq!(config.db.sources[1].schema.as_deref(), Some("public"));
    }

    /// The example in the module documentation is the one users copy: it must parse to the defaults
    /// it claims.
    #[test]
    fn documented_example_round_trips() {
        let doc = include_str!("config.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        let parsed: Config = toml::from_str(&example).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<Config>("[lake]\nrot = 'x'").unwrap_err();
        assert!(err.to_string().contains("unknown field `rot`"), "{err}");
    }

    #[test]
    fn environment_overrides_file() {
        let mut config = Config::default();
        config
            .apply_env(|v| match v {
                "VITALAKE_LAKE_ROOT" => Some("abfss://c@a.dfs.core.windows.net/lake".into()),
                "VITALAKE_INGEST_CHUNK_RECORDS" => Some("7".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(config.lake.root, "abfss://c@a.dfs.core.windows.net/lake");
        assert_eq!(config.ingest.chunk_records, 7);
        let err = config
            .apply_env(|v| (v == "VITALAKE_INGEST_CHUNK_BYTES").then(|| "lots".into()))
            .unwrap_err();
        assert!(
            err.to_string().contains("VITALAKE_INGEST_CHUNK_BYTES"),
            "{err}"
        );
    }
}
