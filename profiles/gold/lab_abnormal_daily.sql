-- Abnormal laboratory results, from silver.lab_result. A result is abnormal when its quantity lies
-- outside its reference range (below low: L, above high: H) or its interpretation flags it: H, L,
-- HH, LL (critical), A, AA (v3 ObservationInterpretation, http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation).
-- Two sections:
--   'per code and day': per LOINC (or other) code and day (UTC; the effective time, else the time
--     the result was issued): results, abnormal ones, high
--     ones, low ones, critical ones (HH, LL, AA);
--   'latest per patient': per patient and code, the latest abnormal result: its time, value, unit
--     and flag.
WITH results AS (
  SELECT id, patient_id, code_system, code, code_display, CAST(value AS DOUBLE) AS value, unit,
         CAST(reference_low AS DOUBLE) AS low, CAST(reference_high AS DOUBLE) AS high,
         interpretation, coalesce(effective_time, issued) AS effective_time
  FROM silver.lab_result
  WHERE code IS NOT NULL AND coalesce(effective_time, issued) IS NOT NULL
),
flagged AS (
  SELECT *,
         CASE
           WHEN interpretation IN ('HH', 'LL', 'AA', 'H', 'L', 'A') THEN interpretation
           WHEN value IS NOT NULL AND low IS NOT NULL AND value < low THEN 'L'
           WHEN value IS NOT NULL AND high IS NOT NULL AND value > high THEN 'H'
         END AS flag
  FROM results
),
latest AS (
  SELECT *, row_number() OVER (PARTITION BY patient_id, code_system, code
                               ORDER BY effective_time DESC, id) AS n
  FROM flagged
  WHERE flag IS NOT NULL AND patient_id IS NOT NULL
)
SELECT 'per code and day' AS section, CAST(effective_time AS DATE) AS day,
       CAST(NULL AS VARCHAR) AS patient_id, code_system, code, max(code_display) AS display,
       count(*) AS results,
       sum(CASE WHEN flag IS NOT NULL THEN 1 ELSE 0 END) AS abnormal,
       sum(CASE WHEN flag IN ('H', 'HH') THEN 1 ELSE 0 END) AS high,
       sum(CASE WHEN flag IN ('L', 'LL') THEN 1 ELSE 0 END) AS low,
       sum(CASE WHEN flag IN ('HH', 'LL', 'AA') THEN 1 ELSE 0 END) AS critical,
       CAST(NULL AS TIMESTAMP) AS latest_abnormal_time, CAST(NULL AS DOUBLE) AS latest_abnormal_value,
       CAST(NULL AS VARCHAR) AS latest_abnormal_unit, CAST(NULL AS VARCHAR) AS latest_abnormal_flag
FROM flagged
GROUP BY CAST(effective_time AS DATE), code_system, code
UNION ALL
SELECT 'latest per patient', CAST(effective_time AS DATE), patient_id, code_system, code,
       code_display, CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT),
       CAST(NULL AS BIGINT), CAST(NULL AS BIGINT),
       CAST(effective_time AS TIMESTAMP), value, unit, flag
FROM latest
WHERE n = 1
