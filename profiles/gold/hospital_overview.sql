-- The hospital at a glance, the leadership's dashboard: one tidy table a BI tool filters by
-- `section`, joining the FHIR records with the `ikhospital` databases.
--   patients by country: current patients of each source (FHIR silver.patient, whose country may
--     be a code or a name, and ikhospital's patients), countries named by ikhospital's countries;
--   events by specialty: ikhospital's events per specialty and day;
--   doctors per shift: active doctors on the rota per shift and weekday (1 = Monday);
--   admissions by class, discharges by class, inpatient census: FHIR encounters per class and day
--     (UTC), and the midnight census of inpatient (IMP) encounters, as in
--     gold.hospital_utilization_daily.
-- Rows deleted at the source (`_deleted_at`) are left out.
WITH countries AS (
  SELECT code, name FROM silver.ikhospital_countries WHERE _deleted_at IS NULL
)
SELECT 'patients by country' AS section, coalesce(c.name, p.country, 'unknown') AS name,
       CAST(NULL AS DATE) AS day, CAST(NULL AS INT) AS weekday, 'fhir' AS source,
       count(*) AS value
FROM silver.patient p
LEFT JOIN countries c ON upper(p.country) = c.code OR lower(p.country) = lower(c.name)
GROUP BY coalesce(c.name, p.country, 'unknown')
UNION ALL
SELECT 'patients by country', coalesce(c.name, p.country, 'unknown'), CAST(NULL AS DATE),
       CAST(NULL AS INT), 'ikhospital', count(*)
FROM silver.ikhospital_patients p
LEFT JOIN countries c ON p.country = c.code
WHERE p._deleted_at IS NULL
GROUP BY coalesce(c.name, p.country, 'unknown')
UNION ALL
SELECT 'events by specialty', s.name, CAST(e.occurred_at AS DATE), CAST(NULL AS INT),
       'ikhospital', count(*)
FROM silver.ikhospital_events e
JOIN silver.ikhospital_specialties s ON s.id = e.specialty_id AND s._deleted_at IS NULL
WHERE e._deleted_at IS NULL
GROUP BY s.name, CAST(e.occurred_at AS DATE)
UNION ALL
SELECT 'doctors per shift', sh.name, CAST(NULL AS DATE), CAST(ds.weekday AS INT), 'ikhospital',
       count(DISTINCT ds.doctor_id)
FROM silver.ikhospital_doctor_shifts ds
JOIN silver.ikhospital_shifts sh ON sh.id = ds.shift_id AND sh._deleted_at IS NULL
JOIN silver.ikhospital_doctors d ON d.id = ds.doctor_id AND d._deleted_at IS NULL AND d.active
WHERE ds._deleted_at IS NULL
GROUP BY sh.name, CAST(ds.weekday AS INT)
UNION ALL
SELECT 'admissions by class', coalesce(class_code, 'unknown'), CAST(period_start AS DATE),
       CAST(NULL AS INT), 'fhir', count(*)
FROM silver.encounter
WHERE period_start IS NOT NULL AND coalesce(status, '') NOT IN ('planned', 'cancelled')
GROUP BY coalesce(class_code, 'unknown'), CAST(period_start AS DATE)
UNION ALL
SELECT 'discharges by class', coalesce(class_code, 'unknown'), CAST(period_end AS DATE),
       CAST(NULL AS INT), 'fhir', count(*)
FROM silver.encounter
WHERE period_end IS NOT NULL AND coalesce(status, '') NOT IN ('planned', 'cancelled')
GROUP BY coalesce(class_code, 'unknown'), CAST(period_end AS DATE)
UNION ALL
SELECT 'inpatient census', 'IMP', day, CAST(NULL AS INT), 'fhir', count(*)
FROM (
  SELECT CAST(unnest(generate_series(CAST(period_start AS DATE),
                                     CAST(coalesce(period_end, now()) AS DATE) - INTERVAL '1 day',
                                     INTERVAL '1 day')) AS DATE) AS day
  FROM silver.encounter
  WHERE class_code = 'IMP' AND period_start IS NOT NULL
    AND coalesce(status, '') NOT IN ('planned', 'cancelled')
    AND CAST(coalesce(period_end, now()) AS DATE) > CAST(period_start AS DATE)
) stays
GROUP BY day
