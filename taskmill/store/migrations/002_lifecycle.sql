-- taskmill schema 2: the whole task lifecycle (dependencies, parents, delayed/recurring tasks, TTL,
-- pause scopes) and history that stays cheap to query at millions of rows.
-- Applied to new stores right after 001 and to v1 stores alike, so both end with the same columns in
-- the same order (ALTER TABLE ADD COLUMN appends; task_history is rebuilt in one statement order).

-- ---------------------------------------------------------------- tasks: new columns, appended
ALTER TABLE tasks ADD COLUMN ttl_seconds DOUBLE;                                  -- NULL: no TTL
ALTER TABLE tasks ADD COLUMN ttl_from VARCHAR NOT NULL DEFAULT 'submission';      -- submission | first_attempt
ALTER TABLE tasks ADD COLUMN expires_at TIMESTAMP;                                -- NULL: not (yet) running against a TTL
ALTER TABLE tasks ADD COLUMN on_dependency_failure VARCHAR NOT NULL DEFAULT 'cancel';  -- cancel | fail | ignore
ALTER TABLE tasks ADD COLUMN fail_fast BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE tasks ADD COLUMN recurring_interval_secs DOUBLE;                      -- NULL: not recurring
ALTER TABLE tasks ADD COLUMN recurring_max_executions BIGINT;                     -- NULL: no limit
ALTER TABLE tasks ADD COLUMN recurring_execution_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN recurring_initial_delay DOUBLE;
ALTER TABLE tasks ADD COLUMN recurring_paused BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE tasks ADD COLUMN pause_reasons VARCHAR[] DEFAULT [];   -- global | domain | group | preempted; NULL = none (cheaper to append)
ALTER TABLE tasks ADD COLUMN memo JSON;                                           -- a waiting parent's return value
ALTER TABLE tasks ADD COLUMN phase VARCHAR NOT NULL DEFAULT 'execute';            -- execute | finalize

-- ---------------------------------------------------------------- task_history: rebuilt
-- Rebuilt rather than altered: `error` becomes `last_error` in place, `seq` (the insertion order,
-- newest = largest) is backfilled in (completed_at, id) order, and the rows are stored in seq order so
-- DuckDB's zone maps can skip everything outside a seq range (history paging).
CREATE TABLE task_history_v2 (
    id                    BIGINT    NOT NULL,  -- the task's id (a requeued or recurring task has one row per execution)
    task_type             VARCHAR   NOT NULL,
    domain                VARCHAR   NOT NULL,
    key                   VARCHAR   NOT NULL,
    label                 VARCHAR   NOT NULL,
    priority              SMALLINT  NOT NULL,
    status                VARCHAR   NOT NULL,  -- completed | failed | cancelled | superseded | expired | dead_letter | dependency_failed
    payload               JSON,
    result                JSON,
    last_error            VARCHAR,
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
    parent_id             BIGINT,
    seq                   BIGINT    NOT NULL,  -- insertion order; pruning deletes only the smallest
    run_after             TIMESTAMP,
    ttl_seconds           DOUBLE,
    ttl_from              VARCHAR,
    expires_at            TIMESTAMP,
    fail_fast             BOOLEAN
);

INSERT INTO task_history_v2
SELECT id, task_type, domain, key, label, priority, status, payload, result, error, tags, group_key, retry_count,
       created_at, started_at, completed_at, duration_ms, read_bytes, write_bytes, net_rx_bytes, net_tx_bytes,
       expected_read_bytes, expected_write_bytes, expected_net_rx_bytes, expected_net_tx_bytes, cpus, memory,
       parent_id, row_number() OVER (ORDER BY completed_at, id) AS seq, NULL, NULL, NULL, NULL, NULL
FROM task_history
ORDER BY seq;

DROP TABLE task_history;
ALTER TABLE task_history_v2 RENAME TO task_history;

-- Point lookups by dedup key (task_lookup, history_by_key, completed_keys) and by id (wait, outcomes).
CREATE INDEX task_history_key ON task_history (key);
CREATE INDEX task_history_id ON task_history (id);

-- ---------------------------------------------------------------- new tables
-- An edge exists while the dependent (task_id) waits on the prerequisite (depends_on).
CREATE TABLE task_deps (
    task_id    BIGINT NOT NULL,
    depends_on BIGINT NOT NULL,
    PRIMARY KEY (task_id, depends_on)
);

-- Paused scopes: kind 'global' (scope ''), 'domain' (scope = domain name) or 'group' (scope = group key).
CREATE TABLE paused_scopes (
    kind      VARCHAR   NOT NULL,
    scope     VARCHAR   NOT NULL,
    paused_at TIMESTAMP NOT NULL,
    resume_at TIMESTAMP,              -- NULL: until resumed by hand
    PRIMARY KEY (kind, scope)
);

-- Per-type aggregates over task_history, kept in the transaction of every history insert and
-- recomputed for the affected types when history is pruned (history_stats reads one row).
-- sum_* are over completed rows only.
CREATE TABLE type_stats (
    task_type       VARCHAR PRIMARY KEY,
    completed       BIGINT NOT NULL,
    failed          BIGINT NOT NULL,
    dead_letter     BIGINT NOT NULL,
    total           BIGINT NOT NULL,
    sum_duration_ms DOUBLE NOT NULL,
    sum_read_bytes  DOUBLE NOT NULL,
    sum_write_bytes DOUBLE NOT NULL
);

INSERT INTO type_stats
SELECT task_type,
       count(*) FILTER (WHERE status = 'completed'),
       count(*) FILTER (WHERE status = 'failed'),
       count(*) FILTER (WHERE status = 'dead_letter'),
       count(*),
       coalesce(sum(duration_ms) FILTER (WHERE status = 'completed'), 0),
       coalesce(sum(read_bytes) FILTER (WHERE status = 'completed'), 0),
       coalesce(sum(write_bytes) FILTER (WHERE status = 'completed'), 0)
FROM task_history
GROUP BY task_type;
