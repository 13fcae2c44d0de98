-- taskmill schema 1: active tasks, finished executions, and meta.
-- Timestamps are TIMESTAMP in UTC. Payloads, tags and results are JSON so SQL reaches inside them.
CREATE TABLE meta (
    key   VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);

CREATE TABLE tasks (
    id                    BIGINT    NOT NULL,  -- unique; assigned by the coordinator, increasing
    task_type             VARCHAR   NOT NULL,  -- qualified: "domain::name"
    domain                VARCHAR   NOT NULL,
    key                   VARCHAR   NOT NULL,  -- dedup key (sha256 hex)
    label                 VARCHAR   NOT NULL,
    priority              SMALLINT  NOT NULL,  -- 0..255, lower is more urgent
    status                VARCHAR   NOT NULL,  -- pending | running | paused | waiting | blocked
    payload               JSON,
    tags                  JSON,
    group_key             VARCHAR,
    created_at            TIMESTAMP NOT NULL,
    run_after             TIMESTAMP,
    started_at            TIMESTAMP,
    retry_count           INTEGER   NOT NULL,
    max_retries           INTEGER   NOT NULL,
    retry_policy          JSON,                -- per-submission policy; NULL means the type's
    last_error            VARCHAR,
    timeout_s             DOUBLE,
    cpus                  DOUBLE    NOT NULL,
    memory                BIGINT    NOT NULL,
    expected_read_bytes   BIGINT    NOT NULL,
    expected_write_bytes  BIGINT    NOT NULL,
    expected_net_rx_bytes BIGINT    NOT NULL,
    expected_net_tx_bytes BIGINT    NOT NULL,
    requeue               BOOLEAN   NOT NULL,  -- a duplicate arrived while running: run once more
    requeue_priority      SMALLINT,
    parent_id             BIGINT
);

CREATE TABLE task_history (
    id                    BIGINT    NOT NULL,  -- the task's id (a requeued task has one row per execution)
    task_type             VARCHAR   NOT NULL,
    domain                VARCHAR   NOT NULL,
    key                   VARCHAR   NOT NULL,
    label                 VARCHAR   NOT NULL,
    priority              SMALLINT  NOT NULL,
    status                VARCHAR   NOT NULL,  -- completed | failed | cancelled | superseded | expired | dead_letter | dependency_failed
    payload               JSON,
    result                JSON,
    error                 VARCHAR,
    tags                  JSON,
    group_key             VARCHAR,
    retry_count           INTEGER   NOT NULL,
    created_at            TIMESTAMP NOT NULL,
    started_at            TIMESTAMP,
    completed_at          TIMESTAMP NOT NULL,
    duration_ms           DOUBLE,
    read_bytes            BIGINT    NOT NULL,
    write_bytes           BIGINT    NOT NULL,
    net_rx_bytes          BIGINT    NOT NULL,
    net_tx_bytes          BIGINT    NOT NULL,
    expected_read_bytes   BIGINT    NOT NULL,
    expected_write_bytes  BIGINT    NOT NULL,
    expected_net_rx_bytes BIGINT    NOT NULL,
    expected_net_tx_bytes BIGINT    NOT NULL,
    cpus                  DOUBLE    NOT NULL,
    memory                BIGINT    NOT NULL,
    parent_id             BIGINT
);
