-- The event store: one row per event, appended by applications (through
-- eventstore.Append or by plain INSERT from any language) and tailed by the
-- feeder in (transaction_id, position) order below the snapshot horizon.
CREATE SCHEMA IF NOT EXISTS eventstore;

CREATE TABLE eventstore.events (
    position       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    version        bigint      NOT NULL CHECK (version > 0),
    event_type     text        NOT NULL CHECK (event_type <> ''),
    payload        jsonb       NOT NULL,
    metadata       jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object'),
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    -- The writing transaction's id: the feeder reads only rows whose
    -- transaction finished (below pg_snapshot_xmin), so a row that commits
    -- late is never skipped.
    transaction_id xid8        NOT NULL DEFAULT pg_current_xact_id(),
    CONSTRAINT events_aggregate_version UNIQUE (aggregate_type, aggregate_id, version)
);

CREATE INDEX events_tail ON eventstore.events (transaction_id, position);

-- One notification per inserting statement, delivered at commit: it wakes
-- the feeders within milliseconds. They poll as a fallback.
CREATE FUNCTION eventstore.notify_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('eventstore_events', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON eventstore.events
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore.notify_events();

-- Events a feeder could not publish (larger than the server's max payload)
-- when it runs with the dead-letter option.
CREATE TABLE eventstore.dead_letters (
    feeder         text        NOT NULL,
    position       bigint      NOT NULL,
    transaction_id xid8        NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    event_type     text        NOT NULL,
    reason         text        NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (feeder, position)
);
