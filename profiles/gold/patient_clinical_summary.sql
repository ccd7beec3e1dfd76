-- One row per patient: demographics, the latest blood pressure and its ACC/AHA 2017 category
-- (Whelton PK et al., Hypertension. 2018;71:e13-e115), the last alert sent, counts of readings
-- and of alerts raised; the active conditions (clinical status active, recurrence or relapse, not
-- abated, not refuted) and active prescriptions (status active), each counted and listed by
-- display; the last encounter (start, class, type); the last laboratory result (time, code,
-- display, value, unit).
-- Refreshed incrementally: a row depends only on the input rows with its key.
-- incremental: patient_id <- silver.patient(id); silver.blood_pressure(patient_id); silver.alerts(patient_id); silver.condition(patient_id); silver.medication_request(patient_id); silver.encounter(patient_id); silver.lab_result(patient_id)
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
),
active_conditions AS (
  SELECT patient_id, count(*) AS conditions,
         string_agg(coalesce(code_display, code), '; ' ORDER BY coalesce(code_display, code)) AS condition_list
  FROM silver.condition
  WHERE coalesce(clinical_status, 'active') IN ('active', 'recurrence', 'relapse')
    AND abatement IS NULL
    AND coalesce(verification_status, '') NOT IN ('refuted', 'entered-in-error')
  GROUP BY patient_id
),
active_medications AS (
  SELECT patient_id, count(*) AS medications,
         string_agg(coalesce(medication_display, rxnorm_code, medication_id), '; '
                    ORDER BY coalesce(medication_display, rxnorm_code, medication_id)) AS medication_list
  FROM silver.medication_request
  WHERE status = 'active'
  GROUP BY patient_id
),
ranked_encounters AS (
  SELECT patient_id, period_start, class_code, type_display,
         row_number() OVER (PARTITION BY patient_id ORDER BY period_start DESC, id) AS n
  FROM silver.encounter
  WHERE period_start IS NOT NULL
),
ranked_labs AS (
  SELECT patient_id, coalesce(effective_time, issued) AS time, code, code_display,
         CAST(value AS DOUBLE) AS value, unit,
         row_number() OVER (PARTITION BY patient_id ORDER BY coalesce(effective_time, issued) DESC, id) AS n
  FROM silver.lab_result
  WHERE coalesce(effective_time, issued) IS NOT NULL
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
  coalesce(c.alerts, 0) AS alerts,
  coalesce(ac.conditions, 0) AS active_conditions,
  ac.condition_list AS active_condition_list,
  coalesce(am.medications, 0) AS active_medications,
  am.medication_list AS active_medication_list,
  e.period_start AS last_encounter_time,
  e.class_code AS last_encounter_class,
  e.type_display AS last_encounter_type,
  l.time AS last_lab_time,
  l.code AS last_lab_code,
  l.code_display AS last_lab_display,
  l.value AS last_lab_value,
  l.unit AS last_lab_unit
FROM silver.patient p
LEFT JOIN ranked_bp b ON b.patient_id = p.id AND b.n = 1
LEFT JOIN readings r ON r.patient_id = p.id
LEFT JOIN ranked_alerts a ON a.patient_id = p.id AND a.n = 1
LEFT JOIN alert_counts c ON c.patient_id = p.id
LEFT JOIN active_conditions ac ON ac.patient_id = p.id
LEFT JOIN active_medications am ON am.patient_id = p.id
LEFT JOIN ranked_encounters e ON e.patient_id = p.id AND e.n = 1
LEFT JOIN ranked_labs l ON l.patient_id = p.id AND l.n = 1
ORDER BY p.id
