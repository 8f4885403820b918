-- User groups from the directory import (year groups, staff, SEN…): the
-- account's normalised group names joined by ';' (a character no group
-- name may hold), '' for none. Replaced with the account on every import.
-- Policy rules and categories can be scoped to groups; a device's agent is
-- sent the groups of the accounts that have had sessions on it.
ALTER TABLE directory_accounts ADD COLUMN groups TEXT NOT NULL DEFAULT '';
