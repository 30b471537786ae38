-- Sockudo apps table (APP_MANAGER_DRIVER=mysql, MySQL 8 / MariaDB 10.5+). Same columns as
-- upstream Sockudo's `applications`, so an existing table can be used unchanged. A node
-- creates this table (under the name APP_MANAGER_TABLE) when it does not exist; apply it by
-- hand otherwise. Keys and ids compare exactly (binary collation): Pusher keys are
-- case-sensitive.
CREATE TABLE IF NOT EXISTS applications (
    id VARCHAR(255) COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
    `key` VARCHAR(255) COLLATE utf8mb4_bin NOT NULL UNIQUE,
    secret VARCHAR(255) NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    max_connections BIGINT NOT NULL DEFAULT 0,
    enable_client_messages BOOLEAN NOT NULL DEFAULT FALSE,
    max_client_events_per_second INT NOT NULL DEFAULT 10,
    max_presence_members_per_channel INT NOT NULL DEFAULT 100,
    max_presence_member_size_in_kb INT NOT NULL DEFAULT 1,
    max_event_payload_in_kb INT NOT NULL DEFAULT 10,
    max_event_channels_at_once INT NOT NULL DEFAULT 100,
    max_event_name_length INT NOT NULL DEFAULT 200,
    max_event_batch_size INT NOT NULL DEFAULT 10,
    enable_user_authentication BOOLEAN NOT NULL DEFAULT FALSE,
    webhooks JSON NULL,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP
) DEFAULT CHARSET = utf8mb4
