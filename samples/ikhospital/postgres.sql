-- ikhospital on PostgreSQL 13+: the pharmacy side of the hospital (medicines, pharmacies,
-- dispensing, stock counts). Load with the server's own client:
--   psql -d ikhospital -f samples/ikhospital/postgres.sql
-- Deterministic (every row computed from its number). Patient MRNs are those of the MySQL side.
-- NDC codes are in the FDA's 5-4-2 package format with FDA-style established names: sample data
-- for pipelines, not a drug reference.

SET client_min_messages = warning;
SET TIME ZONE 'UTC';

DROP TABLE IF EXISTS pharmacy_distribution, stock_counts, pharmacies, medicines CASCADE;
DROP TYPE IF EXISTS dosage_form;

CREATE TYPE dosage_form AS ENUM ('tablet', 'capsule', 'oral solution', 'injection', 'inhaler', 'cream');

CREATE TABLE medicines (
  ndc varchar(13) PRIMARY KEY,
  established_name text NOT NULL,
  proprietary_name text,
  form dosage_form NOT NULL,
  strength numeric(10, 3) NOT NULL,
  strength_unit text NOT NULL,
  package_size integer NOT NULL,
  unit_price numeric(12, 4),
  controlled boolean NOT NULL DEFAULT false,
  atc_codes text[] NOT NULL,
  updated_at timestamptz NOT NULL
);

CREATE TABLE pharmacies (
  id serial PRIMARY KEY,
  name text NOT NULL,
  country char(2) NOT NULL,
  city text NOT NULL,
  opened_on date NOT NULL,
  site_id uuid NOT NULL
);

CREATE TABLE pharmacy_distribution (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  pharmacy_id integer NOT NULL REFERENCES pharmacies (id),
  ndc varchar(13) NOT NULL REFERENCES medicines (ndc),
  patient_mrn varchar(20) NOT NULL,
  quantity integer NOT NULL,
  days_supply smallint,
  dispensed_at timestamptz NOT NULL,
  refill_after interval,
  details jsonb,
  updated_at timestamptz NOT NULL
);

-- Monthly stock counts: no primary key on purpose (lands as a snapshot keyed by row hash).
CREATE TABLE stock_counts (
  pharmacy_id integer NOT NULL,
  ndc varchar(13) NOT NULL,
  counted_on date NOT NULL,
  quantity integer NOT NULL
);

-- ATC codes: WHO Collaborating Centre for Drug Statistics Methodology, ATC/DDD index 2025.
INSERT INTO medicines VALUES
  ('0071-0155-23', 'atorvastatin calcium 10 MG Oral Tablet', 'Lipitor', 'tablet', 10, 'mg', 90, 0.4120, false, '{C10AA05}', '2026-10-01 09:00+00'),
  ('0093-7663-56', 'lisinopril 10 MG Oral Tablet', NULL, 'tablet', 10, 'mg', 30, 0.0950, false, '{C09AA03}', '2026-10-01 09:00+00'),
  ('0378-1805-77', 'amlodipine besylate 5 MG Oral Tablet', NULL, 'tablet', 5, 'mg', 30, 0.0610, false, '{C08CA01}', '2026-10-01 09:00+00'),
  ('0172-5728-60', 'hydrochlorothiazide 25 MG Oral Tablet', NULL, 'tablet', 25, 'mg', 30, 0.0450, false, '{C03AA03}', '2026-10-01 09:00+00'),
  ('0093-1048-01', 'metoprolol tartrate 50 MG Oral Tablet', NULL, 'tablet', 50, 'mg', 60, 0.0730, false, '{C07AB02}', '2026-10-01 09:00+00'),
  ('0781-1506-10', 'metformin hydrochloride 500 MG Oral Tablet', NULL, 'tablet', 500, 'mg', 60, 0.0380, false, '{A10BA02}', '2026-10-01 09:00+00'),
  ('0904-6709-61', 'losartan potassium 50 MG Oral Tablet', NULL, 'tablet', 50, 'mg', 30, 0.1150, false, '{C09CA01}', '2026-10-01 09:00+00'),
  ('0173-0682-20', 'fluticasone propionate 0.11 MG/ACTUAT Metered Dose Inhaler', 'Flovent HFA', 'inhaler', 0.110, 'mg/actuat', 1, 186.2000, false, '{R03BA05}', '2026-10-01 09:00+00'),
  ('0002-8215-01', 'insulin lispro 100 UNT/ML Injectable Solution', 'Humalog', 'injection', 100, 'U/mL', 1, 98.5000, false, '{A10AB04}', '2026-10-01 09:00+00'),
  ('0054-0237-25', 'oxycodone hydrochloride 5 MG Oral Tablet', NULL, 'tablet', 5, 'mg', 100, 0.3300, true, '{N02AA05}', '2026-10-01 09:00+00'),
  ('0093-4155-73', 'amoxicillin 250 MG/5ML Oral Suspension', NULL, 'oral solution', 50, 'mg/mL', 1, 4.2000, false, '{J01CA04}', '2026-10-01 09:00+00'),
  ('0168-0080-15', 'hydrocortisone 10 MG/ML Topical Cream', NULL, 'cream', 10, 'mg/g', 1, 3.9000, false, '{D07AA02}', '2026-10-01 09:00+00'),
  ('0310-0750-90', 'omeprazole 20 MG Delayed Release Oral Capsule', 'Prilosec', 'capsule', 20, 'mg', 90, 0.2100, false, '{A02BC01}', '2026-10-01 09:00+00'),
  ('0006-0749-31', 'sitagliptin 100 MG Oral Tablet', 'Januvia', 'tablet', 100, 'mg', 30, 17.1000, false, '{A10BH01}', '2026-10-01 09:00+00'),
  ('0078-0357-15', 'valsartan 160 MG / hydrochlorothiazide 12.5 MG Oral Tablet', 'Diovan HCT', 'tablet', 172.5, 'mg', 30, 3.2500, false, '{C09DA03,C03AA03}', '2026-10-01 09:00+00');

INSERT INTO pharmacies (name, country, city, opened_on, site_id) VALUES
  ('Farmácia Central', 'PT', 'Lisboa', '2004-05-03', 'a1c0a1b2-0c1d-4e5f-8a9b-000000000001'),
  ('Krankenhausapotheke Nord', 'DE', 'Berlin', '1998-09-14', 'a1c0a1b2-0c1d-4e5f-8a9b-000000000002'),
  ('Farmácia São Lucas', 'BR', 'São Paulo', '2011-02-21', 'a1c0a1b2-0c1d-4e5f-8a9b-000000000003'),
  ('Farmacia Ospedaliera', 'IT', 'Milano', '2001-11-05', 'a1c0a1b2-0c1d-4e5f-8a9b-000000000004'),
  ('Pharmacie de l''Hôpital', 'FR', 'Lyon', '1995-03-30', 'a1c0a1b2-0c1d-4e5f-8a9b-000000000005'),
  ('Outpatient Pharmacy East', 'US', 'Boston', '2015-07-01', 'a1c0a1b2-0c1d-4e5f-8a9b-000000000006'),
  ('Farmacia del Hospital', 'MX', 'Guadalajara', '2009-01-12', 'a1c0a1b2-0c1d-4e5f-8a9b-000000000007'),
  ('Hospital Pharmacy', 'GB', 'Manchester', '1990-10-22', 'a1c0a1b2-0c1d-4e5f-8a9b-000000000008');

-- 4,000 dispenses from 1 October to 20 November 2026, by the patient's country's pharmacy.
INSERT INTO pharmacy_distribution (pharmacy_id, ndc, patient_mrn, quantity, days_supply, dispensed_at, refill_after, details, updated_at)
SELECT
  1 + (p - 1) / 50,
  m.ndc,
  'MRN-' || (ARRAY['PT', 'DE', 'BR', 'IT', 'FR', 'US', 'MX', 'GB'])[1 + (p - 1) / 50] || '-' || (100000 + p),
  m.package_size * (1 + n % 3),
  CASE WHEN m.form IN ('tablet', 'capsule') THEN (m.package_size * (1 + n % 3))::smallint END,
  timestamptz '2026-10-01 08:00+00' + ((n * 1187) % 72000) * interval '1 minute',
  CASE WHEN m.form IN ('tablet', 'capsule') THEN make_interval(days => m.package_size * (1 + n % 3) - 5) END,
  jsonb_build_object('channel', (ARRAY['counter', 'drive-through', 'delivery'])[1 + n % 3], 'generic_substitution', n % 4 = 0),
  timestamptz '2026-10-01 08:00+00' + ((n * 1187) % 72000) * interval '1 minute' + interval '5 minutes'
FROM generate_series(1, 4000) AS n
CROSS JOIN LATERAL (SELECT 1 + (n * 37) % 400 AS p) AS patient
JOIN LATERAL (SELECT ndc, form, package_size FROM medicines ORDER BY ndc OFFSET (n * 7) % 15 LIMIT 1) AS m ON true
ORDER BY n;

INSERT INTO stock_counts
SELECT ph.id, m.ndc, d::date, 200 + (ph.id * 13 + length(m.ndc) * 7 + extract(month FROM d)::int * 29) % 800
FROM pharmacies ph CROSS JOIN medicines m
CROSS JOIN generate_series(timestamp '2026-09-30', timestamp '2026-11-30', interval '1 month') AS d;
