//! Where every table of the lake lives: the one list of table paths, under the lake's root.
//! Gold SQL, BI tools and Spark read these paths; `vitalake query` and `serve` name a table after
//! its path (`silver/fhir/blood_pressure` is `silver.blood_pressure`), so a path here is part of
//! the lake's public shape.

/// Every version of every FHIR resource as received, one table per resource type.
pub const BRONZE_FHIR_PREFIX: &str = "bronze/fhir";
/// One row per file a run read (its hash: a file is ingested once).
pub const INGEST_LOG_TABLE: &str = "bronze/ingest_log";
/// One row per run event: `started`, `finished`, `rolled_back`.
pub const INGEST_RUNS_TABLE: &str = "bronze/ingest_runs";
/// The Bulk Data exports from FHIR servers, and their `transactionTime` (the next `_since`).
pub const FHIR_EXPORTS_TABLE: &str = "bronze/fhir_exports";
/// Every record that did not reach silver, with its reasons.
pub const QUARANTINE_TABLE: &str = "silver/quarantine";
/// The silver tables of the ViewDefinitions, one per view.
pub const SILVER_FHIR_PREFIX: &str = "silver/fhir";
/// Per resource type, the version of each key silver holds.
pub const VERSIONS_PREFIX: &str = "silver/versions";
/// The SCD2 history of the `patient` view.
pub const HISTORY_TABLE: &str = "silver/fhir/patient_history";
/// The data-quality expectations' results of the database extracts.
pub const EXPECTATIONS_TABLE: &str = "silver/expectations";
/// Every alert the rules raised (sent, shadow, backfill or inhibited).
pub const ALERTS_TABLE: &str = "silver/alerts";
/// One receipt per alert a sink took.
pub const DELIVERIES_TABLE: &str = "silver/alert_deliveries";
/// Code tables and maps, for gold SQL.
pub const CONCEPTS_TABLE: &str = "silver/terminology/concepts";
pub const MAPS_TABLE: &str = "silver/terminology/maps";

/// The bronze table of a FHIR resource type.
pub fn bronze_fhir_table(resource_type: &str) -> String {
    format!("{BRONZE_FHIR_PREFIX}/{resource_type}")
}

/// The silver table of the view named `name`.
pub fn view_table(name: &str) -> String {
    format!("{SILVER_FHIR_PREFIX}/{name}")
}

/// The version index of a resource type.
pub fn versions_table(resource_type: &str) -> String {
    format!("{VERSIONS_PREFIX}/{resource_type}")
}

/// The bronze table of the events of the Event Hub (or file or stdin stream) `hub`.
pub fn bronze_events_table(hub: &str) -> String {
    format!("bronze/eventhubs/{hub}")
}

/// The bronze and silver tables of a database table: bronze by engine (`mysql`, `postgres`),
/// silver by database, so that one database served by either engine lands in one silver table.
pub fn database_tables(engine: &str, database: &str, table: &str) -> (String, String) {
    (
        format!("bronze/{engine}/{database}/{table}"),
        format!("silver/{database}/{table}"),
    )
}

/// A gold table.
pub fn gold_table(name: &str) -> String {
    format!("gold/{name}")
}
