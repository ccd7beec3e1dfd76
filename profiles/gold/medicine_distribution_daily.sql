-- Dispensed quantity per NDC code per day, from the pharmacy stream (MedicationDispense).
-- Refreshed incrementally: a row depends only on the input rows with its key.
-- incremental: ndc_code, day <- silver.medication_dispense(ndc_code, CAST(when_handed_over AS DATE))
SELECT
  ndc_code,
  max(ndc_display) AS ndc_display,
  CAST(when_handed_over AS DATE) AS day,
  count(*) AS dispenses,
  sum(CAST(quantity AS DOUBLE)) AS quantity,
  max(quantity_unit) AS quantity_unit,
  count(DISTINCT patient_id) AS patients
FROM silver.medication_dispense
WHERE ndc_code IS NOT NULL AND when_handed_over IS NOT NULL
  AND (status IS NULL OR status NOT IN ('entered-in-error', 'cancelled', 'declined'))
GROUP BY ndc_code, CAST(when_handed_over AS DATE)
ORDER BY day, ndc_code
