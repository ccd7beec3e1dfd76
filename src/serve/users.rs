//! Who may connect, and as which role: users from `[[serve.users]]`, each with its password read
//! from an environment variable at start-up (never from the file), checked with SCRAM-SHA-256.

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use datafusion_postgres::pgwire::api::auth::sasl::scram::gen_salted_password;
use datafusion_postgres::pgwire::api::auth::{AuthSource, LoginInfo, Password};
use datafusion_postgres::pgwire::error::PgWireResult;

use super::ServeError;
pub use crate::config::{Role, UserConfig};

/// PBKDF2 iterations of the SCRAM exchange: PostgreSQL's default.
pub const SCRAM_ITERATIONS: usize = 4096;

/// The users, with their salted passwords, ready for SCRAM.
pub struct Users {
    by_name: HashMap<String, User>,
    /// Used for unknown names, so that an unknown user fails like a wrong password, at the proof,
    /// and the server does not tell which names exist.
    decoy: Password,
}

struct User {
    role: Role,
    salt: Vec<u8>,
    salted_password: Vec<u8>,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: never the salted passwords.
        f.debug_struct("Users")
            .field("names", &self.by_name.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Users {
    /// Reads each user's password from its environment variable (`lookup` is injected for tests).
    pub fn from_config(
        users: &[UserConfig],
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Users, ServeError> {
        if users.is_empty() {
            return Err(ServeError::NoUsers);
        }
        let mut by_name = HashMap::new();
        for user in users {
            let password = lookup(&user.password_env)
                .filter(|p| !p.is_empty())
                .ok_or_else(|| ServeError::MissingPassword {
                    user: user.name.clone(),
                    var: user.password_env.clone(),
                })?;
            let salt: [u8; 16] = rand::random();
            let salted_password = gen_salted_password(&password, &salt, SCRAM_ITERATIONS);
            let entry = User {
                role: user.role,
                salt: salt.to_vec(),
                salted_password,
            };
            if by_name.insert(user.name.clone(), entry).is_some() {
                return Err(ServeError::DuplicateUser(user.name.clone()));
            }
        }
        let salt: [u8; 16] = rand::random();
        let unguessable: [u8; 32] = rand::random();
        let decoy = Password::new(Some(salt.to_vec()), unguessable.to_vec());
        Ok(Users { by_name, decoy })
    }

    pub fn role(&self, name: &str) -> Option<Role> {
        self.by_name.get(name).map(|u| u.role)
    }
}

#[async_trait]
impl AuthSource for Users {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        Ok(match login.user().and_then(|name| self.by_name.get(name)) {
            Some(user) => Password::new(Some(user.salt.clone()), user.salted_password.clone()),
            None => self.decoy.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, var: &str) -> UserConfig {
        UserConfig {
            name: name.into(),
            role: Role::BiReader,
            password_env: var.into(),
        }
    }

    #[test]
    fn a_user_without_a_password_in_the_environment_is_refused() {
        let err = Users::from_config(&[config("powerbi", "PBI_PASSWORD")], |_| None).unwrap_err();
        assert!(err.to_string().contains("PBI_PASSWORD"), "{err}");
        let empty =
            Users::from_config(
                &[config("powerbi", "PBI_PASSWORD")],
                |_| Some(String::new()),
            );
        assert!(empty.is_err());
        assert!(matches!(
            Users::from_config(&[], |_| None),
            Err(ServeError::NoUsers)
        ));
    }

    #[test]
    fn roles_are_looked_up_by_name() {
        let users = Users::from_config(&[config("powerbi", "A"), config("powerbi", "B")], |_| {
            Some("pw".into())
        });
        assert!(matches!(users, Err(ServeError::DuplicateUser(_))));
        let users = Users::from_config(&[config("powerbi", "A")], |_| Some("pw".into())).unwrap();
        assert_eq!(users.role("powerbi"), Some(Role::BiReader));
        assert_eq!(users.role("nobody"), None);
    }
}
