//! Placeholder until Azurite is wired in.
