//! Country-specific demographics for synthetic patients: names, streets, cities with postal codes,
//! phone number formats and UTC offsets, in UTF-8 as a hospital group's records hold them.

use rand::Rng;
use rand::seq::IndexedRandom;

pub struct Country {
    /// ISO 3166-1 alpha-2, as FHIR `Address.country` commonly carries it.
    pub code: &'static str,
    pub given_female: &'static [&'static str],
    pub given_male: &'static [&'static str],
    pub family: &'static [&'static str],
    pub streets: &'static [&'static str],
    /// City, postal code, state or region (may be empty).
    pub cities: &'static [(&'static str, &'static str, &'static str)],
    /// Phone number pattern: `#` is a random digit.
    pub phone: &'static str,
    /// `true` when the house number follows the street (most of Europe and Latin America).
    pub number_after_street: bool,
    /// UTC offset used for event times, e.g. `+01:00`.
    pub offset: &'static str,
}

pub const COUNTRIES: &[Country] = &[
    Country {
        code: "PT",
        given_female: &["Inês", "Maria", "Conceição", "Beatriz", "Leonor"],
        given_male: &["João", "Tomás", "Gonçalo", "Rodrigo", "Afonso"],
        family: &["Gonçalves", "Magalhães", "Conceição", "Simões", "Brandão"],
        streets: &[
            "Rua Augusta",
            "Avenida da Liberdade",
            "Rua de Santa Catarina",
            "Travessa do Carmo",
        ],
        cities: &[
            ("Lisboa", "1100-053", ""),
            ("Porto", "4000-447", ""),
            ("Coimbra", "3000-214", ""),
        ],
        phone: "+351 9## ### ###",
        number_after_street: true,
        offset: "+00:00",
    },
    Country {
        code: "DE",
        given_female: &["Jutta", "Käthe", "Lena", "Annika", "Sophie"],
        given_male: &["Jörg", "Lukas", "Matthias", "Günther", "Felix"],
        family: &["Müller", "Weiß", "Schäfer", "Groß", "Köhler"],
        streets: &[
            "Hauptstraße",
            "Königsallee",
            "Schloßstraße",
            "Bahnhofstraße",
        ],
        cities: &[
            ("Berlin", "10115", "BE"),
            ("München", "80331", "BY"),
            ("Köln", "50667", "NW"),
        ],
        phone: "+49 30 ########",
        number_after_street: true,
        offset: "+01:00",
    },
    Country {
        code: "BR",
        given_female: &["Luíza", "Ana Júlia", "Lúcia", "Fernanda", "Gabriela"],
        given_male: &["João Pedro", "Antônio", "Sebastião", "Caio", "Luís"],
        family: &["Araújo", "Conceição", "Magalhães", "Guimarães", "Brandão"],
        streets: &[
            "Avenida Paulista",
            "Rua Oscar Freire",
            "Rua da Consolação",
            "Avenida Atlântica",
        ],
        cities: &[
            ("São Paulo", "01310-100", "SP"),
            ("Rio de Janeiro", "22021-001", "RJ"),
            ("Belo Horizonte", "30130-010", "MG"),
        ],
        phone: "+55 11 9####-####",
        number_after_street: true,
        offset: "-03:00",
    },
    Country {
        code: "IT",
        given_female: &["Giulia", "Chiara", "Francesca", "Alessia", "Martina"],
        given_male: &["Niccolò", "Lorenzo", "Matteo", "Andrea", "Gianluca"],
        family: &["Rossi", "Esposito", "Bianchi", "Colombo", "D'Angelo"],
        streets: &[
            "Via del Corso",
            "Via Roma",
            "Corso Vittorio Emanuele II",
            "Via Toledo",
        ],
        cities: &[
            ("Roma", "00186", "RM"),
            ("Milano", "20121", "MI"),
            ("Napoli", "80134", "NA"),
        ],
        phone: "+39 06 #### ####",
        number_after_street: true,
        offset: "+01:00",
    },
    Country {
        code: "FR",
        given_female: &["Hélène", "Françoise", "Chloé", "Maëlle", "Léa"],
        given_male: &["François", "Jérôme", "Loïc", "Benoît", "Théo"],
        family: &["Lefèvre", "Dubois", "Rémy", "Fournier", "Gaëtan"],
        streets: &[
            "Rue de Rivoli",
            "Boulevard Saint-Germain",
            "Avenue des Champs-Élysées",
            "Rue de la Paix",
        ],
        cities: &[
            ("Paris", "75001", ""),
            ("Lyon", "69002", ""),
            ("Marseille", "13001", ""),
        ],
        phone: "+33 1 ## ## ## ##",
        number_after_street: false,
        offset: "+01:00",
    },
    Country {
        code: "US",
        given_female: &["Emily", "Madison", "Olivia", "Ashley", "Hannah"],
        given_male: &["James", "Michael", "Tyler", "Brandon", "Ethan"],
        family: &["Smith", "Johnson", "Williams", "O'Connor", "García"],
        streets: &[
            "Main Street",
            "Oak Avenue",
            "Maple Drive",
            "Washington Boulevard",
        ],
        cities: &[
            ("Boston", "02115", "MA"),
            ("Chicago", "60601", "IL"),
            ("Seattle", "98101", "WA"),
        ],
        phone: "+1 (617) 555-0###",
        number_after_street: false,
        offset: "-05:00",
    },
    Country {
        code: "MX",
        given_female: &["María José", "Sofía", "Ximena", "Guadalupe", "Valentina"],
        given_male: &["José Ángel", "Jesús", "Iñaki", "Santiago", "Emiliano"],
        family: &["Peña", "Muñoz", "Hernández", "Núñez", "Ibáñez"],
        streets: &[
            "Avenida Reforma",
            "Calle Madero",
            "Avenida Insurgentes Sur",
            "Calle Durango",
        ],
        cities: &[
            ("Ciudad de México", "06700", "CDMX"),
            ("Guadalajara", "44100", "JAL"),
            ("Monterrey", "64000", "NL"),
        ],
        phone: "+52 55 #### ####",
        number_after_street: true,
        offset: "-06:00",
    },
    Country {
        code: "GB",
        given_female: &["Siobhán", "Olivia", "Amelia", "Isla", "Niamh"],
        given_male: &["Oliver", "Harry", "Rhys", "Seán", "George"],
        family: &["O'Brien", "Smith", "Jones", "Taylor", "Ní Bhriain"],
        streets: &["Baker Street", "High Street", "Abbey Road", "Station Road"],
        cities: &[
            ("London", "NW1 6XE", ""),
            ("Manchester", "M1 1AE", ""),
            ("Edinburgh", "EH1 1YZ", ""),
        ],
        phone: "+44 20 7946 0###",
        number_after_street: false,
        offset: "+00:00",
    },
];

pub fn pick<'a, R: Rng>(rng: &mut R, items: &'a [&'a str]) -> &'a str {
    items.choose(rng).copied().expect("non-empty list")
}

/// A phone number in the country's format.
pub fn phone<R: Rng>(rng: &mut R, country: &Country) -> String {
    country
        .phone
        .chars()
        .map(|c| {
            if c == '#' {
                char::from(b'0' + rng.random_range(0..10u8))
            } else {
                c
            }
        })
        .collect()
}

/// A street line with the house number where the country puts it.
pub fn street_line<R: Rng>(rng: &mut R, country: &Country) -> String {
    let street = pick(rng, country.streets);
    let number = rng.random_range(1..240);
    if country.number_after_street {
        format!("{street}, {number}")
    } else {
        format!("{number} {street}")
    }
}
