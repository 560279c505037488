-- Schemas: one per bounded context's event store, one for identity, one per projection
-- (created by the projection itself so that a rebuild can build a fresh one beside it).
CREATE SCHEMA IF NOT EXISTS billing;
CREATE SCHEMA IF NOT EXISTS identity;
CREATE SCHEMA IF NOT EXISTS reactions;

-- Monthly range partitions for tables partitioned on a timestamptz column.
-- The partition of ``parent`` holding ``at`` (UTC months), created if missing.
CREATE OR REPLACE FUNCTION public.pixevo_ensure_partition(parent regclass, at timestamptz)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    parent_schema text;
    parent_name text;
    month timestamp := date_trunc('month', at AT TIME ZONE 'UTC');
    part text;
BEGIN
    SELECT n.nspname, c.relname INTO parent_schema, parent_name
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = parent;
    part := format('%s_%s', parent_name, to_char(month, 'YYYYMM'));
    IF to_regclass(format('%I.%I', parent_schema, part)) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                   parent_schema, part, parent,
                   month AT TIME ZONE 'UTC', (month + interval '1 month') AT TIME ZONE 'UTC');
    RETURN true;
END $$;

-- The partitions from ``months_back`` months ago to ``months_ahead`` months ahead; how many were new.
CREATE OR REPLACE FUNCTION public.pixevo_ensure_monthly_partitions(
    parent regclass, months_back int DEFAULT 1, months_ahead int DEFAULT 3
) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    made int := 0;
BEGIN
    FOR i IN -months_back .. months_ahead LOOP
        IF public.pixevo_ensure_partition(parent, now() + make_interval(months => i)) THEN
            made := made + 1;
        END IF;
    END LOOP;
    RETURN made;
END $$;
