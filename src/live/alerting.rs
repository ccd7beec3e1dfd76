//! The anomaly rules on the stream: every reading is evaluated as soon as its event is decoded and
//! checked, before its batch lands, and its alerts go to the outbox ([`Outbox`]) at once, whose
//! sender delivers them while the batch lands; the lake's commit never delays an alert, and a sink
//! that fails never stops the stream. Only readings of resources that passed the same checks as
//! silver are evaluated: one that lands in quarantine raises nothing.
//!
//! Exactly-once bookkeeping, with the lake as the memory:
//! - an alert is recorded in `silver/alerts` *before* the bronze commit of its batch, and gets a
//!   receipt in `silver/alert_deliveries` when the sink takes it;
//! - on restart the evaluator's state is rebuilt from silver's readings over the longest rule
//!   window; the ids in `silver/alerts` are not raised again, and those of them without a receipt
//!   are queued again. Events after the last bronze commit are read again and evaluated again:
//!   their alerts have the same ids, so an alert with a receipt is not sent twice, and one
//!   delivered whose receipt was not yet committed is sent again (at least once, with a stable id).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::readings;
use crate::alerts::Outgoing;
use crate::alerts::outbox::{Outbox, OutboxStats};
use crate::alerts::sink;
use crate::alerts::{cloud_event, table};
use crate::ingest::IngestError;
use crate::ingest::stream::events;
use crate::lake::Lake;
use crate::rules::Reading;
use crate::rules::evaluate::{AlertEvent, Delivery, Evaluator, Options};
use crate::rules::{RuleSet, fingerprint};
use crate::stream::Event;

/// How long a stopping stream keeps trying a failing sink before it leaves the alerts still
/// waiting to the next start.
const CLOSE_PATIENCE: Duration = Duration::from_secs(10);

/// An alert and its CloudEvent.
pub type Alert = (AlertEvent, Value);

pub struct Alerting {
    dir: PathBuf,
    evaluator: Mutex<Evaluator>,
    longest_window: Mutex<i64>,
    lateness: i64,
    outbox: Arc<Outbox>,
    /// Ids in `silver/alerts`, or raised and waiting for their batch to record them.
    recorded: Mutex<HashSet<String>>,
    /// The silver versions the state was last brought up to, if it was.
    warmed_at: Mutex<Option<Vec<Option<u64>>>>,
    folder: Mutex<Option<String>>,
}

impl Alerting {
    /// Loads the rules (refusing to start on a broken set) and opens the sink behind its outbox,
    /// which records receipts in `lake`.
    pub async fn open(
        dir: PathBuf,
        sink: &str,
        lateness: i64,
        lake: &Lake,
        stats: Arc<OutboxStats>,
    ) -> Result<Arc<Alerting>, IngestError> {
        // Bad input (exit code 2), its problems kept whole as the source.
        let rules = RuleSet::load(&dir).map_err(|invalid| IngestError::Input {
            path: dir.display().to_string(),
            source: std::io::Error::other(invalid),
        })?;
        let outbox = Outbox::start(sink::open(sink).await?, sink, lake.clone(), stats);
        tracing::info!(rules = rules.rules.len(), folder = %dir.display(), "anomaly rules loaded");
        Ok(Arc::new(Alerting {
            folder: Mutex::new(fingerprint(&dir)),
            longest_window: Mutex::new(rules.longest_window()),
            evaluator: Mutex::new(Evaluator::new(&rules, Options { lateness })),
            dir,
            lateness,
            outbox,
            recorded: Mutex::new(HashSet::new()),
            warmed_at: Mutex::new(None),
        }))
    }

    /// Brings the evaluator's state up to silver when a partition starts reading here, after its
    /// recovery (so silver holds every reading landed for it):
    /// - the first time, every patient's readings over the longest window (a restart);
    /// - later (this process took the partition over from another while running), the readings of
    ///   the partition's patients, which the other process landed: their state is dropped and
    ///   rebuilt, and the alerts it recorded are not sent again.
    ///
    /// Nothing is read again while silver has not changed since the last time (at start, every
    /// partition asks before anything lands).
    pub async fn warm_up(
        &self,
        lake: &Lake,
        bronze: &str,
        partition_id: &str,
    ) -> Result<(), IngestError> {
        let versions = silver_versions(lake).await?;
        let first = {
            let mut warmed_at = self.warmed_at.lock().expect("lock");
            if warmed_at.as_ref() == Some(&versions) {
                return Ok(());
            }
            warmed_at.replace(versions).is_none()
        };
        let window = *self.longest_window.lock().expect("lock") + self.lateness;
        let newest = readings::newest_time(lake).await?;
        // Alerts on record are never raised again (those without a receipt are queued again
        // below). With no reading in silver yet, every one: a batch that never reached silver may
        // have recorded the alerts of its events (and of events read ahead of it) before a crash.
        let recorded_since = newest.map_or(0, |n| n - 2 * window);
        let recorded = table::recorded_ids(lake, recorded_since).await?;
        let recorded_alerts = recorded.len();
        self.recorded.lock().expect("lock").extend(recorded);
        let delivered = table::delivered_ids(lake, recorded_since).await?;
        let patients = match newest {
            Some(newest) if !first => Some(
                events::partition_patients(lake, bronze, partition_id, newest - 2 * window).await?,
            ),
            _ => None,
        };
        // Alerts a run before this one (or the process this partition came from) recorded but did
        // not deliver.
        let undelivered: Vec<_> = table::undelivered(lake, recorded_since, &delivered)
            .await?
            .into_iter()
            .filter(|a| patients.as_ref().is_none_or(|p| p.contains(&a.patient)))
            .collect();
        self.outbox.know_delivered(delivered);
        let requeued = self.outbox.push(undelivered);
        if requeued > 0 {
            tracing::info!(partition_id, requeued, "undelivered alerts queued again");
        }
        let Some(newest) = newest else {
            return Ok(());
        };
        let since = newest - window;
        let readings = readings::from_silver(lake, since).await?;
        let now = chrono::Utc::now().timestamp_millis();
        let mut evaluator = self.evaluator.lock().expect("lock");
        if let Some(patients) = &patients {
            for patient in patients {
                evaluator.forget(patient);
            }
        }
        let mut fed = 0;
        for reading in &readings {
            if patients
                .as_ref()
                .is_none_or(|p| p.contains(&reading.patient))
            {
                evaluator.evaluate(reading, now);
                fed += 1;
            }
        }
        tracing::info!(
            partition_id,
            readings = fed,
            patients = patients.as_ref().map_or(evaluator.patients(), |p| p.len()),
            recorded_alerts,
            "rule state brought up to silver"
        );
        Ok(())
    }

    /// Evaluates the readings of one decoded event (those of its resources that passed every
    /// check) and queues its new alerts for the sink. Returns every new alert (for the clinicians
    /// or only to be recorded).
    pub fn offer(&self, event: &Event, mut readings: Vec<Reading>) -> Vec<Alert> {
        if readings.is_empty() {
            return Vec::new();
        }
        let received_at = event.enqueued_time.map_or_else(
            || chrono::Utc::now().timestamp_millis(),
            |micros| micros / 1000,
        );
        for reading in &mut readings {
            reading.received_at = Some(received_at);
        }
        let now = chrono::Utc::now().timestamp_millis();
        let mut alerts = Vec::new();
        {
            let mut evaluator = self.evaluator.lock().expect("lock");
            let mut recorded = self.recorded.lock().expect("lock");
            for reading in &readings {
                for alert in evaluator.evaluate(reading, now) {
                    if recorded.insert(alert.id.clone()) {
                        let event = cloud_event(&alert);
                        alerts.push((alert, event));
                    }
                }
            }
        }
        self.outbox.push(
            alerts
                .iter()
                .filter(|(a, _)| a.delivery == Delivery::Sent)
                .map(|(a, e)| Outgoing {
                    id: a.id.clone(),
                    patient: a.patient.clone(),
                    event: e.clone(),
                }),
        );
        for (alert, _) in &alerts {
            tracing::info!(
                rule = %alert.rule.id,
                alert_id = %alert.id,
                status = alert.transition.name(),
                delivery = alert.delivery.name(),
                lag_ms = alert.detected_at - alert.effective_time,
                "alert"
            );
        }
        alerts
    }

    /// Reloads the rules if the folder changed (or `force`, on SIGHUP). All or nothing: a broken
    /// edit keeps the running set and says why.
    pub fn reload(&self, force: bool) {
        let now = fingerprint(&self.dir);
        let mut folder = self.folder.lock().expect("lock");
        if !force && now == *folder {
            return;
        }
        *folder = now;
        match RuleSet::load_dir(&self.dir) {
            Ok(rules) => {
                *self.longest_window.lock().expect("lock") = rules.longest_window();
                self.evaluator.lock().expect("lock").replace_rules(&rules);
                tracing::info!(rules = rules.rules.len(), "anomaly rules reloaded");
            }
            Err(problems) => {
                for problem in &problems.0 {
                    tracing::warn!(%problem, "rule reload refused; the running rules stay");
                }
            }
        }
    }

    /// Watches the folder (every second) and SIGHUP until `stop`.
    pub fn watch(self: &Arc<Self>, stop: CancellationToken) {
        let alerting = self.clone();
        tokio::spawn(async move {
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                let force = tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => false,
                    Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                };
                let alerting = alerting.clone();
                let _ = tokio::task::spawn_blocking(move || alerting.reload(force)).await;
            }
        });
    }

    /// Delivers what waits (for a while, if the sink fails) and closes the sink. Returns how many
    /// alerts are still waiting: the next start sends them.
    pub async fn close(&self) -> u64 {
        self.outbox.close(CLOSE_PATIENCE).await
    }
}

/// The versions of the silver tables the state is rebuilt from.
async fn silver_versions(lake: &Lake) -> Result<Vec<Option<u64>>, IngestError> {
    let mut versions = Vec::new();
    for table in readings::READING_TABLES
        .into_iter()
        .chain([table::ALERTS_TABLE])
    {
        versions.push(lake.existing_table(table).await?.and_then(|t| t.version()));
    }
    Ok(versions)
}
