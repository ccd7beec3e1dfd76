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

use std::collections::BTreeMap;
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
    pub validate: ValidateConfig,
    pub db: DbConfig,
    pub serve: ServeConfig,
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
    pub sources: Vec<SourceConfig>,
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
            lease_seconds: DEFAULT_LEASE_SECONDS,
        }
    }
}

/// How long a killed run's lease on an `abfss://` lake holds it, by default.
pub const DEFAULT_LEASE_SECONDS: usize = 60;

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

// The settings of each part of vitalake, as `vitalake.toml` writes them. They live here, with the
// file they come from, so that this module needs none of the parts it configures; each part
// re-exports its own.

/// What a rule's findings do: send the resource to quarantine, or only warn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Quarantine,
    Warn,
}

/// Which profiles apply beyond those a resource claims, and per-rule policies.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidateConfig {
    /// Validate against profiles at all (structure is always checked).
    pub enabled: bool,
    /// The folder of StructureDefinitions, ValueSets and CodeSystems.
    pub profiles: String,
    /// Hold every Observation coded LOINC 85354-9 to the R4 `bp` profile.
    pub bp_panels_to_bp_profile: bool,
    /// Hold every Patient to US Core Patient.
    pub patients_to_us_core: bool,
    /// Rule key (`vs-2`, `binding`, `dom-6`, ...) to `quarantine` or `warn`, overriding the severity
    /// the profile gives.
    pub policy: BTreeMap<String, Policy>,
}

impl Default for ValidateConfig {
    fn default() -> Self {
        ValidateConfig {
            enabled: true,
            profiles: DEFAULT_PROFILES.into(),
            bp_panels_to_bp_profile: true,
            patients_to_us_core: false,
            policy: BTreeMap::new(),
        }
    }
}

/// The profiles folder a checkout has. Where it is missing (the binary run from another folder),
/// the profiles built into the binary are used; a folder the configuration names must exist.
pub const DEFAULT_PROFILES: &str = "profiles";

/// `[serve]` in `vitalake.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Where to listen; `--listen` overrides it.
    pub listen: String,
    /// PEM certificate chain and PKCS#8/RSA/EC private key: with both, clients may (and with
    /// `sslmode=require` must) use TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// How often the catalogue is re-read, so new commits and tables show.
    pub refresh_seconds: u64,
    pub users: Vec<UserConfig>,
    /// Column masks for `bi_reader`; when given, they replace [`default_masks`].
    pub masks: Vec<MaskConfig>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: "127.0.0.1:5433".into(),
            tls_cert: None,
            tls_key: None,
            refresh_seconds: 10,
            users: Vec::new(),
            masks: default_masks(),
        }
    }
}

/// `[[serve.masks]]`: how one column is shown to a `bi_reader`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {
    /// The table's SQL name, `silver.patient`.
    pub table: String,
    pub column: String,
    pub mask: Mask,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mask {
    /// Text becomes `***`; a value of another type becomes NULL.
    Redact,
    /// A date or time becomes its year (an integer).
    Year,
    /// Always NULL (for the parts of an address other than the country).
    Null,
}

/// The masks used when the configuration declares none: names, phone, record numbers and other
/// identifiers redacted; birth and death dates reduced to the year; addresses to the country (HIPAA
/// Safe Harbor, 45 CFR 164.514(b)(2), lists these as identifiers). Quarantined raw records and
/// their messages, which may quote any field, are hidden.
pub fn default_masks() -> Vec<MaskConfig> {
    let patient = [
        ("mrn", Mask::Redact),
        ("identifiers", Mask::Redact),
        ("family_name", Mask::Redact),
        ("given_names", Mask::Redact),
        ("phone", Mask::Redact),
        ("birth_date", Mask::Year),
        ("deceased_at", Mask::Year),
        ("address_line", Mask::Null),
        ("city", Mask::Null),
        ("postal_code", Mask::Null),
    ];
    let ikhospital_patient = [
        ("mrn", Mask::Redact),
        ("given_name", Mask::Redact),
        ("family_name", Mask::Redact),
        ("phone", Mask::Redact),
        ("birth_date", Mask::Year),
        ("city", Mask::Null),
    ];
    let summary = [("birth_date", Mask::Year), ("city", Mask::Null)];
    let quarantine = [("raw", Mask::Null), ("errors", Mask::Null)];
    let tables: [(&str, &[(&str, Mask)]); 5] = [
        ("silver.patient", &patient),
        ("silver.patient_history", &patient),
        ("silver.ikhospital_patients", &ikhospital_patient),
        ("gold.patient_clinical_summary", &summary),
        ("silver.quarantine", &quarantine),
    ];
    tables
        .iter()
        .flat_map(|(table, columns)| {
            columns.iter().map(|(column, mask)| MaskConfig {
                table: table.to_string(),
                column: column.to_string(),
                mask: *mask,
            })
        })
        .collect()
}

/// What a user may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Every table of every layer, as stored.
    Analyst,
    /// Silver and gold only, with the PHI columns masked (`[[serve.masks]]`); never bronze, which
    /// holds raw records.
    BiReader,
}

/// `[[serve.users]]`: one login.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub role: Role,
    /// The environment variable holding the password. There is no default password.
    pub password_env: String,
}

/// One source database, from `[[db.sources]]` in `vitalake.toml` or `--source URL`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// `mysql://user@host:3306/ikhospital` or `postgres://user@host:5432/ikhospital`. A password in
    /// the URL works but belongs in the environment: `password_env`, else `MYSQL_PWD` / `PGPASSWORD`.
    pub url: String,
    /// The environment variable holding the password.
    pub password_env: Option<String>,
    /// Table name patterns to extract (`*`, `?`); empty: every table.
    pub include: Vec<String>,
    /// Table name patterns to leave out.
    pub exclude: Vec<String>,
    /// Extract views too.
    pub views: bool,
    /// PostgreSQL schema (default `public`).
    pub schema: Option<String>,
    /// Cursor column per table, where the detected one (an `updated_at`-like timestamp, else an
    /// auto-increment key) is not the right one.
    pub cursors: BTreeMap<String, String>,
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
