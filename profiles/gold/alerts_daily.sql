-- Per rule, severity and day (of the readings' effective time): alerts raised and sent, raised but
-- not sent (shadow, inhibited, backfill), resolved, patients affected, and raised alerts per
-- patient-day (patients with a blood-pressure reading that day).
-- Refreshed incrementally: a row depends only on the input rows with its key.
-- incremental: day <- silver.alerts(CAST(effective_time AS DATE)); silver.blood_pressure(CAST(effective_time AS DATE))
WITH patient_days AS (
  SELECT CAST(effective_time AS DATE) AS day, count(DISTINCT patient_id) AS patients
  FROM silver.blood_pressure
  WHERE patient_id IS NOT NULL AND effective_time IS NOT NULL
  GROUP BY CAST(effective_time AS DATE)
)
SELECT
  a.rule_id,
  a.severity,
  CAST(a.effective_time AS DATE) AS day,
  sum(CASE WHEN a.status = 'raised' AND a.delivery = 'sent' THEN 1 ELSE 0 END) AS raised,
  sum(CASE WHEN a.status = 'raised' AND a.delivery <> 'sent' THEN 1 ELSE 0 END) AS raised_not_sent,
  sum(CASE WHEN a.status = 'resolved' THEN 1 ELSE 0 END) AS resolved,
  count(DISTINCT CASE WHEN a.status = 'raised' THEN a.patient_id END) AS patients_affected,
  max(d.patients) AS patient_days,
  CAST(sum(CASE WHEN a.status = 'raised' THEN 1 ELSE 0 END) AS DOUBLE) / max(d.patients) AS alerts_per_patient_day
FROM silver.alerts a
LEFT JOIN patient_days d ON d.day = CAST(a.effective_time AS DATE)
GROUP BY a.rule_id, a.severity, CAST(a.effective_time AS DATE)
ORDER BY day, a.rule_id
