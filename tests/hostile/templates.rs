//! Hostile plugins: templates (filled in below).
