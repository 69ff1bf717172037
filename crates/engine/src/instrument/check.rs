//! The row a GPU check reports (`ferrolm gpu-check` prints them as a table).

/// One line of the gpu-check table.
pub struct CheckRow {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

impl CheckRow {
    /// A row from a check's outcome: its verdict and detail, or the error that stopped it.
    pub fn from_result<E: std::fmt::Display>(
        name: impl Into<String>,
        r: std::result::Result<(bool, String), E>,
    ) -> Self {
        let name = name.into();
        match r {
            Ok((ok, detail)) => Self { name, ok, detail },
            Err(e) => Self {
                name,
                ok: false,
                detail: format!("error: {e}"),
            },
        }
    }
}
