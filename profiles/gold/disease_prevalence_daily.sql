-- Patients with an active condition, per condition code and day (UTC), on each day the count
-- changes (an onset or an abatement): between two rows of a code the count holds, so a BI tool
-- fills forward, and the latest row of a code is today's prevalence.
-- A condition is active from its onset (else its recorded date) until its abatement, unless its
-- verification status is refuted or entered-in-error; one without an abatement counts while its
-- clinical status is active, recurrence or relapse (or not given).
-- The ICD-10-CM chapter comes from the condition's ICD-10-CM code, else from its SNOMED CT code
-- through a loaded SNOMED CT to ICD-10-CM ConceptMap, against the chapters loaded into
-- silver.terminology_concepts (`vitalake ingest terminology profiles/terminology/icd-10-cm-chapters.csv`).
-- A code without a display gets the terminology's.
WITH conditions AS (
  SELECT patient_id, coalesce(code_system, '') AS code_system, code, code_display, icd10cm_code,
         snomed_code,
         CAST(coalesce(onset, recorded_date) AS DATE) AS starts,
         CAST(abatement AS DATE) AS ends
  FROM silver.condition
  WHERE patient_id IS NOT NULL AND code IS NOT NULL AND coalesce(onset, recorded_date) IS NOT NULL
    AND coalesce(verification_status, '') NOT IN ('refuted', 'entered-in-error')
    AND (abatement IS NOT NULL
         OR coalesce(clinical_status, 'active') IN ('active', 'recurrence', 'relapse'))
),
snomed_to_icd AS (
  SELECT source_code, min(target_code) AS icd
  FROM silver.terminology_maps
  WHERE source_system = 'http://snomed.info/sct'
    AND target_system = 'http://hl7.org/fhir/sid/icd-10-cm'
  GROUP BY source_code
),
chapters AS (
  SELECT code AS chapter_range, display AS chapter,
         split_part(code, '-', 1) AS low, split_part(code, '-', 2) AS high
  FROM silver.terminology_concepts
  WHERE system = 'http://hl7.org/fhir/sid/icd-10-cm' AND code LIKE '%-%'
),
codes AS (
  SELECT c.code_system, c.code,
         coalesce(max(c.code_display), max(t.display)) AS display,
         coalesce(max(c.icd10cm_code), max(m.icd)) AS icd10cm_code
  FROM conditions c
  LEFT JOIN silver.terminology_concepts t ON t.system = c.code_system AND t.code = c.code
  LEFT JOIN snomed_to_icd m ON m.source_code = c.snomed_code
  GROUP BY c.code_system, c.code
),
changes AS (
  SELECT code_system, code, starts AS day FROM conditions
  UNION
  SELECT code_system, code, ends FROM conditions WHERE ends IS NOT NULL
),
prevalence AS (
  SELECT ch.day, ch.code_system, ch.code, count(DISTINCT c.patient_id) AS patients
  FROM changes ch
  LEFT JOIN conditions c ON c.code_system = ch.code_system AND c.code = ch.code
   AND c.starts <= ch.day AND (c.ends IS NULL OR c.ends > ch.day)
  GROUP BY ch.day, ch.code_system, ch.code
)
SELECT p.day, p.code_system, p.code, k.display, k.icd10cm_code,
       h.chapter_range AS icd10cm_chapter_range, h.chapter AS icd10cm_chapter,
       p.patients
FROM prevalence p
JOIN codes k ON k.code_system = p.code_system AND k.code = p.code
LEFT JOIN chapters h ON substr(k.icd10cm_code, 1, 3) >= h.low AND substr(k.icd10cm_code, 1, 3) <= h.high
ORDER BY p.day, p.code_system, p.code
