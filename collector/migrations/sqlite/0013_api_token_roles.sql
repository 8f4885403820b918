-- API tokens carry a console role (what the token may read and do, the
-- same matrix as console accounts) and may cover every site instead of
-- their own. Tokens made before this were for posting two-step sign-ins,
-- which the technician role allows.
ALTER TABLE api_tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'technician';
ALTER TABLE api_tokens ADD COLUMN all_sites INTEGER NOT NULL DEFAULT 0;
-- The console account that made the token (NULL: made on the command
-- line). The token works only while that account could still make it:
-- enabled, with a role that may grant the token's, and holding its site.
ALTER TABLE api_tokens ADD COLUMN created_by INTEGER REFERENCES console_users(id);
