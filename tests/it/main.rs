//! Integration tests: one binary (each file in `tests/` would link deltalake again).
//! Every test writes real Delta tables into a temporary lake.

mod azure;
mod bad_input;
mod bulk_server;
mod common;
mod crash;
mod cutting_proxy;
mod db;
mod eventhubs;
mod eventhubs_peer;
mod fhir_server;
mod fuzz;
mod gold;
mod gold_ehr;
mod ingest_fhir;
mod maintain;
mod rules;
mod serve;
mod servers;
mod silver;
mod sql_on_fhir;
mod stream;
mod validate;
