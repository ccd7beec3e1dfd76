-- One row per patient: demographics, the latest blood pressure and its ACC/AHA 2017 category
-- (Whelton PK et al., Hypertension. 2018;71:e13-e115), the last alert sent, counts of readings
-- and of alerts raised.
-- Refreshed incrementally: a row depends only on the input rows with its key.
-- incremental: patient_id <- silver.patient(id); silver.blood_pressure(patient_id); silver.alerts(patient_id)
WITH ranked_bp AS (
  SELECT patient_id, effective_time, CAST(systolic AS DOUBLE) AS systolic, CAST(diastolic AS DOUBLE) AS diastolic,
         row_number() OVER (PARTITION BY patient_id ORDER BY effective_time DESC, id) AS n
  FROM silver.blood_pressure
  WHERE patient_id IS NOT NULL AND effective_time IS NOT NULL
),
readings AS (
  SELECT patient_id, count(*) AS readings FROM silver.blood_pressure GROUP BY patient_id
),
ranked_alerts AS (
  SELECT patient_id, rule_id, severity, effective_time,
         row_number() OVER (PARTITION BY patient_id ORDER BY effective_time DESC, id) AS n
  FROM silver.alerts
  WHERE status = 'raised' AND delivery = 'sent'
),
alert_counts AS (
  SELECT patient_id, count(*) AS alerts FROM silver.alerts WHERE status = 'raised' GROUP BY patient_id
)
SELECT
  p.id AS patient_id,
  p.gender,
  p.birth_date,
  p.city,
  p.country,
  b.effective_time AS latest_bp_time,
  b.systolic AS latest_systolic,
  b.diastolic AS latest_diastolic,
  CASE
    WHEN b.systolic IS NULL OR b.diastolic IS NULL THEN NULL
    WHEN b.systolic > 180 OR b.diastolic > 120 THEN 'hypertensive crisis'
    WHEN b.systolic >= 140 OR b.diastolic >= 90 THEN 'stage 2 hypertension'
    WHEN b.systolic >= 130 OR b.diastolic >= 80 THEN 'stage 1 hypertension'
    WHEN b.systolic >= 120 THEN 'elevated'
    ELSE 'normal'
  END AS latest_category,
  a.rule_id AS last_alert_rule,
  a.severity AS last_alert_severity,
  a.effective_time AS last_alert_time,
  coalesce(r.readings, 0) AS readings,
  coalesce(c.alerts, 0) AS alerts
FROM silver.patient p
LEFT JOIN ranked_bp b ON b.patient_id = p.id AND b.n = 1
LEFT JOIN readings r ON r.patient_id = p.id
LEFT JOIN ranked_alerts a ON a.patient_id = p.id AND a.n = 1
LEFT JOIN alert_counts c ON c.patient_id = p.id
ORDER BY p.id
