//! `vitalake demo`: the main job on the bundled samples, end to end, with nothing configured: the
//! FHIR drop, the observation stream through the default rules (alerts to a local file), the
//! pharmacy stream, the hospital databases if configured, the gold tables, and a short summary.
//! Every step is the command a user would run, so a second demo on the same lake adds nothing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use deltalake::arrow::record_batch::RecordBatch;
use deltalake::arrow::util::pretty::pretty_format_batches;
use tokio_util::sync::CancellationToken;

use crate::ingest::IngestOptions;
use crate::lake::Lake;
use crate::live::{RulesOptions, StreamOptions, run_stream};
use crate::stream::{BatchBounds, SourceSpec};

pub struct DemoOptions {
    /// The samples folder (`drop/`, `stream/`).
    pub samples: PathBuf,
    pub rules: PathBuf,
    /// Where alerts are written (CloudEvents, one per line).
    pub alerts: PathBuf,
    pub ingest: IngestOptions,
    pub db: Option<crate::ingest::db::DbOptions>,
    pub gold: PathBuf,
}

/// The questions the summary answers, over the lake's catalogue.
const SUMMARY: [(&str, &str); 6] = [
    (
        "Alerts sent, by rule",
        "SELECT rule_id, severity, count(*) AS alerts, count(DISTINCT patient_id) AS patients \
         FROM silver.alerts WHERE status = 'raised' AND delivery = 'sent' GROUP BY rule_id, severity ORDER BY alerts DESC, rule_id",
    ),
    (
        "Quarantine, by first reason",
        "SELECT stage, errors[1]['rule'] AS rule, count(*) AS records FROM silver.quarantine \
         GROUP BY stage, errors[1]['rule'] ORDER BY records DESC, rule",
    ),
    (
        "Sample query: patients whose latest blood pressure is stage 2 or a crisis (gold.patient_clinical_summary)",
        "SELECT latest_category, count(*) AS patients FROM gold.patient_clinical_summary \
         WHERE latest_category IN ('stage 2 hypertension', 'hypertensive crisis') GROUP BY latest_category ORDER BY latest_category",
    ),
    (
        "Encounters by class (gold.hospital_utilization_daily)",
        "SELECT encounter_class, sum(admissions) AS admissions, \
         round(avg(los_mean_hours), 2) AS mean_stay_hours, sum(readmissions_30d) AS readmissions_30d \
         FROM gold.hospital_utilization_daily GROUP BY encounter_class ORDER BY admissions DESC",
    ),
    (
        "Conditions active today (gold.disease_prevalence_daily, latest row per code)",
        "SELECT display, icd10cm_chapter, patients FROM (SELECT *, row_number() OVER \
         (PARTITION BY code_system, code ORDER BY day DESC) AS n FROM gold.disease_prevalence_daily) \
         WHERE n = 1 AND patients > 0 ORDER BY patients DESC, display LIMIT 8",
    ),
    (
        "Medicines dispensed (gold.medicine_distribution_daily)",
        "SELECT ndc_display, sum(quantity) AS quantity, sum(dispenses) AS dispenses \
         FROM gold.medicine_distribution_daily GROUP BY ndc_display ORDER BY quantity DESC LIMIT 5",
    ),
];

fn stream_options(hub: &str, options: &DemoOptions, rules: bool) -> StreamOptions {
    StreamOptions {
        hub: hub.to_string(),
        bounds: BatchBounds::default(),
        decode: options.ingest.decode.clone(),
        checks: options.ingest.checks.clone(),
        views: options.ingest.views.clone(),
        metrics: None,
        compact_files: 0,
        stop: CancellationToken::new(),
        consumer_group: "$Default".into(),
        rules: rules.then(|| RulesOptions {
            dir: options.rules.clone(),
            sink: format!("file:{}", options.alerts.display()),
            lateness: 5 * crate::rules::rule::MINUTE,
        }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{} not found: run the demo from a vitalake checkout, or pass --samples DIR", path.display())]
    MissingSample { path: PathBuf },
    #[error("reading the gold definitions in {}: {source}", dir.display())]
    GoldDefinitions {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("printing the summary: {0}")]
    Summary(#[from] deltalake::arrow::error::ArrowError),
}

fn sample(options: &DemoOptions, rel: &str) -> Result<PathBuf, DemoError> {
    let path = options.samples.join(rel);
    if !path.exists() {
        return Err(DemoError::MissingSample { path });
    }
    Ok(path)
}

/// Runs the demo and returns its summary, as text.
///
/// The stream goes first: the sample drop holds clinic readings of the same patients dated after
/// the sample stream's day, and readings older than what the lake already knows of a patient are
/// evaluated as backfill (recorded, not sent), which would leave the demo without a live alert.
pub async fn run(lake: &Lake, options: DemoOptions) -> crate::Result<String> {
    let mut out = String::new();
    let drop = sample(&options, "drop")?;
    let observations = sample(&options, "stream/observations.ndjson")?;
    let pharmacy = sample(&options, "stream/pharmacy.ndjson")?;

    let spec = |path: &Path| SourceSpec::File {
        path: path.display().to_string(),
        follow: false,
    };
    let stream = run_stream(
        lake,
        spec(&observations),
        stream_options("observations", &options, true),
    )
    .await?;
    let _ = writeln!(
        out,
        "1. Observation stream {}: {} events ({} already landed), {} quarantined, {} alert events (sent alerts in {})",
        observations.display(),
        stream.events,
        stream.skipped_already_landed,
        stream.quarantined,
        stream.alerts,
        options.alerts.display()
    );
    let report =
        crate::ingest::ingest_fhir(lake, &[drop.display().to_string()], options.ingest.clone())
            .await?;
    let _ = writeln!(
        out,
        "2. FHIR drop {}: {} files read, {} resources to bronze, {} records quarantined, {} files already ingested",
        drop.display(),
        report.stats.files_read,
        report.bronze_rows,
        report.quarantine_rows,
        report.stats.files_skipped.len()
    );
    // The rest of the record (encounters, diagnoses, labs...): two Synthea patients, and the
    // ICD-10-CM chapters the disease prevalence names (when run from a checkout).
    let ehr = sample(&options, "ehr")?;
    let report =
        crate::ingest::ingest_fhir(lake, &[ehr.display().to_string()], options.ingest.clone())
            .await?;
    let chapters = options
        .gold
        .with_file_name("terminology/icd-10-cm-chapters.csv");
    let loaded = if chapters.exists() {
        crate::terminology::load(lake, &[chapters.as_path()]).await?;
        "; ICD-10-CM chapters loaded"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "2b. EHR records {}: {} resources to bronze, {} quarantined{loaded}",
        ehr.display(),
        report.bronze_rows,
        report.quarantine_rows,
    );
    let dispenses = run_stream(
        lake,
        spec(&pharmacy),
        stream_options("pharmacy", &options, false),
    )
    .await?;
    let _ = writeln!(
        out,
        "3. Pharmacy stream {}: {} events",
        pharmacy.display(),
        dispenses.events
    );
    match &options.db {
        Some(db) => {
            let report = crate::ingest::db::ingest_db(lake, db).await?;
            let tables: usize = report.sources.iter().map(|s| s.tables.len()).sum();
            let _ = writeln!(
                out,
                "4. Hospital databases: {} sources, {tables} tables",
                report.sources.len()
            );
        }
        None => {
            let _ = writeln!(
                out,
                "4. Hospital databases: skipped, none configured. List them as [[db.sources]] in vitalake.toml \
             (url = \"mysql://user@host:3306/ikhospital\", password from MYSQL_PWD / PGPASSWORD), or run \
             `vitalake ingest db --source postgres://user@host:5432/ikhospital`"
            );
        }
    }
    let tables = crate::gold::refresh::definitions(&options.gold).map_err(|source| {
        DemoError::GoldDefinitions {
            dir: options.gold.clone(),
            source,
        }
    })?;
    let gold = crate::gold::refresh::refresh(lake, &tables, None, false).await?;
    let refreshed: Vec<String> = gold
        .tables
        .iter()
        .map(|t| match &t.skipped {
            None => format!("{} ({} rows)", t.table, t.rows),
            Some(_) => format!("{} (skipped: input missing)", t.table),
        })
        .collect();
    let _ = writeln!(out, "5. Gold: {}", refreshed.join(", "));

    let ctx = crate::gold::catalog::session(lake).await?;
    let names: Vec<RecordBatch> = ctx
        .sql(
            "SELECT table_schema || '.' || table_name AS t FROM information_schema.tables \
              WHERE table_schema IN ('bronze', 'silver', 'gold') ORDER BY 1",
        )
        .await?
        .collect()
        .await?;
    let mut counts = Vec::new();
    for batch in &names {
        let column = deltalake::arrow::compute::cast(
            batch.column(0),
            &deltalake::arrow::datatypes::DataType::Utf8,
        )
        .map_err(DemoError::from)?;
        let column = column
            .as_any()
            .downcast_ref::<deltalake::arrow::array::StringArray>()
            .expect("text");
        for name in column.iter().flatten() {
            let n: Vec<RecordBatch> = ctx
                .sql(&format!("SELECT count(*) FROM {name}"))
                .await?
                .collect()
                .await?;
            let rows = n
                .first()
                .and_then(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<deltalake::arrow::array::Int64Array>()
                })
                .map_or(0, |a| a.value(0));
            counts.push(format!("  {name:<44} {rows:>8}"));
        }
    }
    let _ = writeln!(out, "\nTables and rows:\n{}", counts.join("\n"));
    for (title, sql) in SUMMARY {
        let batches = ctx.sql(sql).await?.collect().await?;
        let _ = writeln!(
            out,
            "\n{title}:\n{}",
            pretty_format_batches(&batches).map_err(DemoError::from)?
        );
    }
    Ok(out)
}
