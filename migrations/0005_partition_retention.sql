-- Retention of append-only read tables: the monthly partitions (named <table>_YYYYMM by
-- pixevo_ensure_partition) that ended before ``before`` are dropped; how many were.
-- Only for tables whose rows may be lost (a live feed's history); never the event store.
CREATE OR REPLACE FUNCTION public.pixevo_drop_partitions_before(parent regclass, before timestamptz)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped int := 0;
BEGIN
    FOR part IN
        SELECT n.nspname AS schema_name, c.relname AS name
          FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE i.inhparent = parent AND c.relname ~ '_[0-9]{6}$'
    LOOP
        IF ((to_date(right(part.name, 6), 'YYYYMM') + interval '1 month') AT TIME ZONE 'UTC')
               <= before THEN
            EXECUTE format('DROP TABLE %I.%I', part.schema_name, part.name);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END $$;
