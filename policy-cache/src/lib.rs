//! How must a mail domain be reached, and why.
