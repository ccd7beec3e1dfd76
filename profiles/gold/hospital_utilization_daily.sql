-- Hospital utilization per day (UTC) and encounter class (v3 ActCode: AMB ambulatory, EMER
-- emergency, IMP inpatient, ...), from silver.encounter:
--   admissions: encounters that started that day;
--   discharges: encounters that ended that day;
--   census: encounters in progress at the end of the day (the midnight census: started that day or
--     before, not ended by midnight);
--   bed_days: the hours of the day the encounters covered, divided by 24;
--   los_mean_hours, los_median_hours: length of stay (end - start) of the day's discharges;
--   readmissions_30d: the day's discharges after which the same patient started another encounter
--     of the same class within 30 days (the window of CMS's Hospital Readmissions Reduction
--     Program, 42 CFR 412.150-412.154; filter encounter_class = 'IMP' for inpatient readmissions).
-- Encounters without a start, or planned or cancelled ones, are left out; one without an end is in
-- progress until now.
WITH stays AS (
  SELECT id, patient_id, coalesce(class_code, 'unknown') AS class,
         CAST(period_start AS TIMESTAMP) AS starts,
         CAST(coalesce(period_end, now()) AS TIMESTAMP) AS ends,
         CAST(period_end AS TIMESTAMP) AS ended
  FROM silver.encounter
  WHERE period_start IS NOT NULL
    AND coalesce(status, '') NOT IN ('planned', 'cancelled')
    AND coalesce(period_end, now()) >= period_start
),
stay_days AS (
  SELECT class, starts, ends,
         CAST(unnest(generate_series(CAST(starts AS DATE), CAST(ends AS DATE), INTERVAL '1 day')) AS TIMESTAMP) AS day
  FROM stays
),
covered AS (
  SELECT class, CAST(day AS DATE) AS day,
         sum(CASE WHEN ends >= day + INTERVAL '1 day' THEN 1 ELSE 0 END) AS census,
         sum(date_part('epoch', least(ends, day + INTERVAL '1 day') - greatest(starts, day))) / 86400.0 AS bed_days
  FROM stay_days
  GROUP BY class, CAST(day AS DATE)
),
admitted AS (
  SELECT class, CAST(starts AS DATE) AS day, count(*) AS admissions
  FROM stays GROUP BY class, CAST(starts AS DATE)
),
readmitted AS (
  SELECT DISTINCT s.id
  FROM stays s
  JOIN stays n ON n.patient_id = s.patient_id AND n.class = s.class AND n.id <> s.id
   AND n.starts > s.ended AND n.starts <= s.ended + INTERVAL '30 days'
  WHERE s.ended IS NOT NULL
),
discharged AS (
  SELECT s.class, CAST(s.ended AS DATE) AS day, count(*) AS discharges,
         avg(date_part('epoch', s.ended - s.starts) / 3600.0) AS los_mean_hours,
         median(date_part('epoch', s.ended - s.starts) / 3600.0) AS los_median_hours,
         count(r.id) AS readmissions_30d
  FROM stays s LEFT JOIN readmitted r ON r.id = s.id
  WHERE s.ended IS NOT NULL
  GROUP BY s.class, CAST(s.ended AS DATE)
)
SELECT c.day, c.class AS encounter_class,
       coalesce(a.admissions, 0) AS admissions,
       coalesce(d.discharges, 0) AS discharges,
       c.census,
       c.bed_days,
       d.los_mean_hours,
       d.los_median_hours,
       coalesce(d.readmissions_30d, 0) AS readmissions_30d
FROM covered c
LEFT JOIN admitted a ON a.class = c.class AND a.day = c.day
LEFT JOIN discharged d ON d.class = c.class AND d.day = c.day
ORDER BY c.day, encounter_class
