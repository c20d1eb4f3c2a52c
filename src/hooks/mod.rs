//! PostgreSQL hooks driftdb installs at preload. Each hook is a thin shim that calls the
//! previous hook (or the standard implementation) and the driftdb module that cares.
pub mod utility;

pub fn init() {
    utility::install();
}
