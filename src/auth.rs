//! The `/auth/*` endpoints (login, callback, session info, logout, disconnect, forward-auth)
//! and the two policies every route that needs a user shares: [`guard`] (who is asking, is the
//! token fresh, which headers say so) and [`csrf`] (the one cross-site rule).

pub mod csrf;
pub mod guard;
mod login;
pub mod return_to;
#[cfg(test)]
mod return_to_tests;
mod session_routes;
pub mod subject;

pub use login::{begin_login, complete_login};
pub use session_routes::{check, disconnect, jwks, logout, session_info};
