-- Per patient and day: readings, min/max/mean systolic and diastolic, and the day's blood-pressure
-- category by the 2017 ACC/AHA guideline applied to the day's means (Whelton PK, Carey RM, et al.
-- Hypertension. 2018;71:e13-e115, table 6; crisis: section 11.2).
-- Refreshed incrementally: a row depends only on the input rows with its key.
-- incremental: patient_id, day <- silver.blood_pressure(patient_id, CAST(effective_time AS DATE))
SELECT
  patient_id,
  CAST(effective_time AS DATE) AS day,
  count(*) AS readings,
  min(CAST(systolic AS DOUBLE)) AS systolic_min,
  max(CAST(systolic AS DOUBLE)) AS systolic_max,
  avg(CAST(systolic AS DOUBLE)) AS systolic_mean,
  min(CAST(diastolic AS DOUBLE)) AS diastolic_min,
  max(CAST(diastolic AS DOUBLE)) AS diastolic_max,
  avg(CAST(diastolic AS DOUBLE)) AS diastolic_mean,
  CASE
    WHEN avg(CAST(systolic AS DOUBLE)) > 180 OR avg(CAST(diastolic AS DOUBLE)) > 120 THEN 'hypertensive crisis'
    WHEN avg(CAST(systolic AS DOUBLE)) >= 140 OR avg(CAST(diastolic AS DOUBLE)) >= 90 THEN 'stage 2 hypertension'
    WHEN avg(CAST(systolic AS DOUBLE)) >= 130 OR avg(CAST(diastolic AS DOUBLE)) >= 80 THEN 'stage 1 hypertension'
    WHEN avg(CAST(systolic AS DOUBLE)) >= 120 THEN 'elevated'
    ELSE 'normal'
  END AS category
FROM silver.blood_pressure
WHERE patient_id IS NOT NULL AND effective_time IS NOT NULL
  AND systolic IS NOT NULL AND diastolic IS NOT NULL
GROUP BY patient_id, CAST(effective_time AS DATE)
ORDER BY patient_id, day
