-- ikhospital on MySQL 8 / MariaDB 10.6+: the clinical side of the hospital (patients, doctors,
-- specialties, shifts, symptoms, events). Load with the server's own client:
--   mariadb ikhospital < samples/ikhospital/mysql.sql      (or: mysql ikhospital < ...)
-- Deterministic: every row is computed from its number, no RAND(). A handful of events break the
-- hospital's business rules on purpose (see the end of the file and expectations.toml).

SET NAMES utf8mb4;
SET time_zone = '+00:00';

DROP TABLE IF EXISTS events, doctor_shifts, shifts, doctors, symptoms, specialties, patients, countries;

CREATE TABLE countries (
  code CHAR(2) PRIMARY KEY,
  name VARCHAR(60) NOT NULL,
  phone_prefix VARCHAR(4) NOT NULL
);

CREATE TABLE patients (
  id INT UNSIGNED AUTO_INCREMENT PRIMARY KEY,
  mrn VARCHAR(20) NOT NULL UNIQUE,
  given_name VARCHAR(60) NOT NULL,
  family_name VARCHAR(60) NOT NULL,
  sex ENUM('female', 'male') NOT NULL,
  birth_date DATE NOT NULL,
  country CHAR(2) NOT NULL REFERENCES countries(code),
  city VARCHAR(60) NOT NULL,
  phone VARCHAR(24),
  height_cm DECIMAL(5,1),
  updated_at DATETIME(6) NOT NULL
);

CREATE TABLE specialties (
  id SMALLINT PRIMARY KEY,
  name VARCHAR(60) NOT NULL,
  treats_children BOOLEAN NOT NULL,
  sex_restriction ENUM('female', 'male')
);

CREATE TABLE symptoms (
  id SMALLINT PRIMARY KEY,
  name VARCHAR(80) NOT NULL,
  specialty_id SMALLINT NOT NULL REFERENCES specialties(id),
  icd10 VARCHAR(8) NOT NULL
);

CREATE TABLE doctors (
  id INT AUTO_INCREMENT PRIMARY KEY,
  name VARCHAR(80) NOT NULL,
  specialty_id SMALLINT NOT NULL REFERENCES specialties(id),
  licence_number VARCHAR(20) NOT NULL,
  hired_on DATE NOT NULL,
  active BIT(1) NOT NULL DEFAULT b'1'
);

CREATE TABLE shifts (
  id TINYINT UNSIGNED PRIMARY KEY,
  name ENUM('morning', 'afternoon', 'night') NOT NULL,
  starts_at TIME NOT NULL,
  ends_at TIME NOT NULL
);

-- The rota: no primary key on purpose (lands as a snapshot keyed by row hash).
CREATE TABLE doctor_shifts (
  doctor_id INT NOT NULL,
  shift_id TINYINT UNSIGNED NOT NULL,
  weekday TINYINT NOT NULL
);

CREATE TABLE events (
  id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,
  patient_id INT UNSIGNED NOT NULL,
  doctor_id INT,
  specialty_id SMALLINT NOT NULL,
  symptom_id SMALLINT,
  occurred_at DATETIME NOT NULL,
  kind ENUM('consultation', 'emergency', 'admission', 'discharge') NOT NULL,
  triage SET('urgent', 'referral', 'walk-in', 'follow-up') NOT NULL DEFAULT '',
  notes TEXT,
  updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
);

INSERT INTO countries VALUES
  ('PT', 'Portugal', '+351'), ('DE', 'Germany', '+49'), ('BR', 'Brazil', '+55'),
  ('IT', 'Italy', '+39'), ('FR', 'France', '+33'), ('US', 'United States', '+1'),
  ('MX', 'Mexico', '+52'), ('GB', 'United Kingdom', '+44');

INSERT INTO specialties VALUES
  (1, 'General practice', TRUE, NULL), (2, 'Paediatrics', TRUE, NULL),
  (3, 'Gynaecology', FALSE, 'female'), (4, 'Urology', FALSE, 'male'),
  (5, 'Oncology', FALSE, NULL), (6, 'Cardiology', FALSE, NULL),
  (7, 'Dermatology', FALSE, NULL), (8, 'Otorhinolaryngology', FALSE, NULL);

-- ICD-10-CM codes (CDC/NCHS, FY2025 tabular list).
INSERT INTO symptoms VALUES
  (1, 'Fever', 1, 'R50.9'), (2, 'Cough', 1, 'R05.9'),
  (3, 'Fever in a child', 2, 'R50.9'), (4, 'Otitis media', 2, 'H66.90'),
  (5, 'Pelvic pain', 3, 'R10.2'), (6, 'Irregular menstruation', 3, 'N92.6'),
  (7, 'Dysuria', 4, 'R30.0'), (8, 'Haematuria', 4, 'R31.9'),
  (9, 'Breast lump', 5, 'N63.0'), (10, 'Abnormal weight loss', 5, 'R63.4'),
  (11, 'Chest pain', 6, 'R07.9'), (12, 'Palpitations', 6, 'R00.2'),
  (13, 'Rash', 7, 'R21'), (14, 'Change in a mole', 7, 'D22.9'),
  (15, 'Allergic rhinitis', 8, 'J30.9'), (16, 'Sore throat', 8, 'J02.9');

INSERT INTO shifts VALUES
  (1, 'morning', '07:00:00', '15:00:00'), (2, 'afternoon', '15:00:00', '23:00:00'),
  (3, 'night', '23:00:00', '07:00:00');

-- A numbers helper (0..9999), dropped at the end.
CREATE TABLE digits (d TINYINT PRIMARY KEY);
INSERT INTO digits VALUES (0), (1), (2), (3), (4), (5), (6), (7), (8), (9);
CREATE TABLE numbers (n INT PRIMARY KEY);
INSERT INTO numbers SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d
  FROM digits a, digits b, digits c, digits e;

-- 400 patients, 50 per country, with the country's names, cities and phone formats.
INSERT INTO patients (mrn, given_name, family_name, sex, birth_date, country, city, phone, height_cm, updated_at)
SELECT
  CONCAT('MRN-', country, '-', 100000 + n),
  CASE country
    WHEN 'PT' THEN IF(female, ELT(1 + n % 5, 'Maria', 'Ana', 'Inês', 'Beatriz', 'Joana'), ELT(1 + n % 5, 'João', 'Tiago', 'Rui', 'Gonçalo', 'Duarte'))
    WHEN 'DE' THEN IF(female, ELT(1 + n % 5, 'Anna', 'Lena', 'Jürgen', 'Sophie', 'Käthe'), ELT(1 + n % 5, 'Lukas', 'Jörg', 'Felix', 'Maximilian', 'Stefan'))
    WHEN 'BR' THEN IF(female, ELT(1 + n % 5, 'Ana', 'Júlia', 'Luíza', 'Camila', 'Fernanda'), ELT(1 + n % 5, 'José', 'Lucas', 'Thiago', 'Matheus', 'Caio'))
    WHEN 'IT' THEN IF(female, ELT(1 + n % 5, 'Giulia', 'Chiara', 'Francesca', 'Sara', 'Martina'), ELT(1 + n % 5, 'Luca', 'Marco', 'Niccolò', 'Matteo', 'Davide'))
    WHEN 'FR' THEN IF(female, ELT(1 + n % 5, 'Chloé', 'Léa', 'Camille', 'Zoé', 'Inès'), ELT(1 + n % 5, 'Hugo', 'Théo', 'Lucas', 'Jérôme', 'Noël'))
    WHEN 'US' THEN IF(female, ELT(1 + n % 5, 'Emily', 'Olivia', 'Ava', 'Madison', 'Grace'), ELT(1 + n % 5, 'James', 'Michael', 'Ethan', 'Noah', 'Daniel'))
    WHEN 'MX' THEN IF(female, ELT(1 + n % 5, 'Sofía', 'Valentina', 'Ximena', 'Regina', 'Guadalupe'), ELT(1 + n % 5, 'Santiago', 'Mateo', 'José Luis', 'Diego', 'Emiliano'))
    ELSE IF(female, ELT(1 + n % 5, 'Amelia', 'Isla', 'Olivia', 'Freya', 'Siobhan'), ELT(1 + n % 5, 'Oliver', 'Harry', 'George', 'Alfie', 'Rhys'))
  END,
  CASE country
    WHEN 'PT' THEN ELT(1 + n % 6, 'Silva', 'Santos', 'Ferreira', 'Pereira', 'Gonçalves', 'Magalhães')
    WHEN 'DE' THEN ELT(1 + n % 6, 'Müller', 'Schmidt', 'Schneider', 'Fischer', 'Weiß', 'Groß')
    WHEN 'BR' THEN ELT(1 + n % 6, 'Oliveira', 'Souza', 'Lima', 'Araújo', 'Conceição', 'Ribeiro')
    WHEN 'IT' THEN ELT(1 + n % 6, 'Rossi', 'Russo', 'Ferrari', 'Esposito', 'Bianchi', 'Colombo')
    WHEN 'FR' THEN ELT(1 + n % 6, 'Martin', 'Bernard', 'Lefèvre', 'Dubois', 'Moreau', 'Girard')
    WHEN 'US' THEN ELT(1 + n % 6, 'Smith', 'Johnson', 'Williams', 'Brown', 'Garcia', 'Miller')
    WHEN 'MX' THEN ELT(1 + n % 6, 'Hernández', 'García', 'Martínez', 'López', 'González', 'Pérez')
    ELSE ELT(1 + n % 6, 'Smith', 'Jones', 'Taylor', 'Evans', 'O''Brien', 'Davies')
  END,
  IF(female, 'female', 'male'),
  DATE_ADD('1938-03-01', INTERVAL (n * 7919) % 30500 DAY),
  country,
  CASE country
    WHEN 'PT' THEN ELT(1 + n % 3, 'Lisboa', 'Porto', 'Braga')
    WHEN 'DE' THEN ELT(1 + n % 3, 'Berlin', 'München', 'Köln')
    WHEN 'BR' THEN ELT(1 + n % 3, 'São Paulo', 'Rio de Janeiro', 'Belo Horizonte')
    WHEN 'IT' THEN ELT(1 + n % 3, 'Roma', 'Milano', 'Napoli')
    WHEN 'FR' THEN ELT(1 + n % 3, 'Paris', 'Lyon', 'Marseille')
    WHEN 'US' THEN ELT(1 + n % 3, 'Boston', 'Chicago', 'Austin')
    WHEN 'MX' THEN ELT(1 + n % 3, 'Ciudad de México', 'Guadalajara', 'Monterrey')
    ELSE ELT(1 + n % 3, 'London', 'Manchester', 'Edinburgh')
  END,
  CASE country
    WHEN 'PT' THEN CONCAT('+351 9', LPAD((n * 7331) % 100000000, 8, '0'))
    WHEN 'DE' THEN CONCAT('+49 151 ', LPAD((n * 7331) % 100000000, 8, '0'))
    WHEN 'BR' THEN CONCAT('+55 11 9', LPAD((n * 7331) % 100000000, 8, '0'))
    WHEN 'IT' THEN CONCAT('+39 3', LPAD((n * 7331) % 1000000000, 9, '0'))
    WHEN 'FR' THEN CONCAT('+33 6 ', LPAD((n * 7331) % 100000000, 8, '0'))
    WHEN 'US' THEN CONCAT('+1 617 555 ', LPAD((n * 7331) % 10000, 4, '0'))
    WHEN 'MX' THEN CONCAT('+52 55 ', LPAD((n * 7331) % 100000000, 8, '0'))
    ELSE CONCAT('+44 7700 9', LPAD((n * 7331) % 100000, 5, '0'))
  END,
  IF(n % 17 = 0, NULL, 150 + (n * 31) % 450 / 10),
  TIMESTAMP('2026-11-01 08:00:00') + INTERVAL n MINUTE
FROM (
  SELECT n, n % 2 = 1 AS female, ELT(1 + (n - 1) DIV 50, 'PT', 'DE', 'BR', 'IT', 'FR', 'US', 'MX', 'GB') AS country
  FROM numbers WHERE n BETWEEN 1 AND 400
) p
ORDER BY n;

-- Three doctors per specialty.
INSERT INTO doctors (name, specialty_id, licence_number, hired_on, active)
SELECT
  CONCAT('Dr. ', ELT(1 + n % 12, 'Almeida', 'Becker', 'Costa', 'Dupont', 'Esposito', 'Fernández',
                     'García', 'Hughes', 'Ito', 'Kowalski', 'Lambert', 'Moreira')),
  1 + (n - 1) DIV 3,
  CONCAT('LIC-', 10000 + n * 37),
  DATE_ADD('2005-01-10', INTERVAL n * 113 DAY),
  IF(n = 7, b'0', b'1')
FROM numbers WHERE n BETWEEN 1 AND 24 ORDER BY n;

-- Every doctor on one shift five weekdays a week.
INSERT INTO doctor_shifts
SELECT d.id, 1 + d.id % 3, w.n FROM doctors d JOIN numbers w ON w.n BETWEEN 1 AND 5;

-- 3,000 events from 1 October to 20 November 2026, each with a specialty allowed for the patient:
-- children (under 15) see general practice or paediatrics; women never urology, men never gynaecology.
INSERT INTO events (patient_id, specialty_id, occurred_at, kind, triage, notes, updated_at)
SELECT
  p.id,
  CASE
    WHEN TIMESTAMPDIFF(YEAR, p.birth_date, e.at) < 15 THEN 1 + e.n % 2
    WHEN p.sex = 'female' THEN ELT(1 + e.n % 7, 1, 3, 5, 6, 7, 8, 3)
    ELSE ELT(1 + e.n % 7, 1, 4, 5, 6, 7, 8, 4)
  END,
  e.at,
  ELT(1 + e.n % 10, 'consultation', 'consultation', 'consultation', 'consultation', 'consultation',
                    'consultation', 'emergency', 'emergency', 'admission', 'discharge'),
  ELT(1 + e.n % 5, 'walk-in', 'referral', 'urgent,walk-in', '', 'follow-up,referral'),
  IF(e.n % 9 = 0, NULL, CONCAT('Visit ', e.n)),
  e.at + INTERVAL 2 HOUR
FROM (
  SELECT n, 1 + (n * 37) % 400 AS patient, TIMESTAMP('2026-10-01 07:00:00') + INTERVAL (n * 1187) % 72000 MINUTE AS at
  FROM numbers WHERE n BETWEEN 1 AND 3000
) e
JOIN patients p ON p.id = e.patient
ORDER BY e.n;

-- The symptom belongs to the specialty; the doctor is one of its three.
UPDATE events SET
  symptom_id = 2 * specialty_id - 1 + id % 2,
  doctor_id = 3 * (specialty_id - 1) + 1 + id % 3;

-- Broken on purpose: the hospital's data-quality checks must find exactly these.
-- A man seen in gynaecology, a woman in urology:
UPDATE events SET specialty_id = 3, symptom_id = 5, doctor_id = 7 WHERE id = 101;
UPDATE events SET specialty_id = 4, symptom_id = 7, doctor_id = 10 WHERE id = 202;
-- A child (patient 19, born 2016) seen in cardiology:
INSERT INTO events (id, patient_id, doctor_id, specialty_id, symptom_id, occurred_at, kind, triage, notes, updated_at)
VALUES (3001, 19, 16, 6, 11, '2026-11-20 10:30:00', 'consultation', 'referral', 'Visit 3001', '2026-11-20 12:30:00');
-- Oncology treating allergic rhinitis (an adult, patient 12):
UPDATE events SET specialty_id = 5, doctor_id = 13, symptom_id = 15 WHERE id = 303;

DROP TABLE numbers, digits;
