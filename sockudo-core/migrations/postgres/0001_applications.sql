-- Sockudo apps table (APP_MANAGER_DRIVER=postgres). Same columns as upstream Sockudo's
-- `applications`, so an existing table can be used unchanged. A node creates this table
-- (under the name APP_MANAGER_TABLE) when it does not exist; apply it by hand otherwise.
CREATE TABLE IF NOT EXISTS applications (
    id VARCHAR(255) PRIMARY KEY,
    key VARCHAR(255) NOT NULL UNIQUE,
    secret VARCHAR(255) NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    max_connections BIGINT NOT NULL DEFAULT 0,
    enable_client_messages BOOLEAN NOT NULL DEFAULT FALSE,
    max_client_events_per_second INTEGER NOT NULL DEFAULT 10,
    max_presence_members_per_channel INTEGER NOT NULL DEFAULT 100,
    max_presence_member_size_in_kb INTEGER NOT NULL DEFAULT 1,
    max_event_payload_in_kb INTEGER NOT NULL DEFAULT 10,
    max_event_channels_at_once INTEGER NOT NULL DEFAULT 100,
    max_event_name_length INTEGER NOT NULL DEFAULT 200,
    max_event_batch_size INTEGER NOT NULL DEFAULT 10,
    enable_user_authentication BOOLEAN NOT NULL DEFAULT FALSE,
    webhooks JSONB,
    created_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP
)
