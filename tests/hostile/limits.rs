//! Hostile plugins: limits (filled in below).
