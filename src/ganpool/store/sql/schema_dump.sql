-- Catalog queries of `store.schema_dump`: the ganpool schema as PostgreSQL holds it, every
-- list in name order so that the dump is deterministic. Read by tools/dump_schema.py and by
-- tests/integration/test_schema_file.py, which compares a migrated database with schema.sql.

-- class_key --
-- The class name in this database's role names (normalised to <class> in the dump).
SELECT key FROM ganpool.class_roles;

-- relations --
-- Tables and views of the schema, with their owner and row-level security flags.
SELECT c.oid, quote_ident(c.relname) AS name, c.relkind AS kind, pg_get_userbyid(c.relowner) AS owner,
       c.relrowsecurity AS rls, c.relforcerowsecurity AS force_rls,
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END AS view
FROM pg_class AS c
WHERE c.relnamespace = 'ganpool'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
ORDER BY c.relname;

-- columns --
-- A relation's columns in their stored order (a row type's order matters to %ROWTYPE).
SELECT quote_ident(a.attname) AS name, format_type(a.atttypid, a.atttypmod) AS type,
       a.attnotnull AS not_null, a.attidentity AS identity, a.attgenerated AS generated,
       pg_get_expr(d.adbin, d.adrelid) AS default
FROM pg_attribute AS a
LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;

-- constraints --
-- A table's constraints but NOT NULL (a column property; PostgreSQL 18 also lists it here).
SELECT conname AS name, pg_get_constraintdef(oid) AS definition
FROM pg_constraint
WHERE conrelid = %(oid)s AND contype <> 'n'
ORDER BY conname;

-- indexes --
-- A table's indexes, those behind its constraints included.
SELECT indexrelid::regclass::text AS name, pg_get_indexdef(indexrelid) AS definition
FROM pg_index WHERE indrelid = %(oid)s
ORDER BY 1;

-- triggers --
-- A table's own triggers (not the internal ones behind foreign keys).
SELECT tgname AS name, pg_get_triggerdef(oid) AS definition
FROM pg_trigger WHERE tgrelid = %(oid)s AND NOT tgisinternal
ORDER BY tgname;

-- policies --
-- A table's row-level security policies.
SELECT polname AS name, polcmd AS command, polpermissive AS permissive,
       ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(r) END
             FROM unnest(polroles) AS r ORDER BY 1) AS roles,
       pg_get_expr(polqual, polrelid) AS using, pg_get_expr(polwithcheck, polrelid) AS checks
FROM pg_policy WHERE polrelid = %(oid)s
ORDER BY polname;

-- relation_grants --
-- Who may do what on a relation (the owner's own privileges left out), by grantee.
SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END AS grantee,
       string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type) AS privileges
FROM pg_class AS c, aclexplode(c.relacl) AS a
WHERE c.oid = %(oid)s AND a.grantee <> c.relowner
GROUP BY 1 ORDER BY 1;

-- column_grants --
-- Privileges granted on single columns of a relation.
SELECT a.attname AS column, CASE WHEN x.grantee = 0 THEN 'PUBLIC'
                                 ELSE pg_get_userbyid(x.grantee) END AS grantee,
       string_agg(x.privilege_type, ', ' ORDER BY x.privilege_type) AS privileges
FROM pg_attribute AS a, aclexplode(a.attacl) AS x
WHERE a.attrelid = %(oid)s AND NOT a.attisdropped
GROUP BY 1, 2 ORDER BY 1, 2;

-- sequences --
-- Sequences that are not a table's identity (those come with their column).
SELECT c.relname AS name, pg_get_userbyid(c.relowner) AS owner
FROM pg_class AS c
WHERE c.relnamespace = 'ganpool'::regnamespace AND c.relkind = 'S'
  AND NOT EXISTS (SELECT 1 FROM pg_depend AS d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'i')
ORDER BY c.relname;

-- types --
-- Types of the schema that are not a relation's row type: enums, domains, composites.
SELECT t.typname AS name, t.typtype AS kind, format_type(t.oid, NULL) AS formatted,
       ARRAY(SELECT e.enumlabel::text FROM pg_enum AS e WHERE e.enumtypid = t.oid
             ORDER BY e.enumsortorder) AS labels
FROM pg_type AS t
WHERE t.typnamespace = 'ganpool'::regnamespace AND t.typtype IN ('c', 'd', 'e', 'r')
  AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
ORDER BY t.typname;

-- functions --
-- Every function and procedure of the schema: its whole definition, owner and grants.
SELECT p.oid::regprocedure::text AS signature, pg_get_functiondef(p.oid) AS definition,
       pg_get_userbyid(p.proowner) AS owner,
       ARRAY(SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END
             FROM aclexplode(p.proacl) AS a
             WHERE a.grantee <> p.proowner AND a.privilege_type = 'EXECUTE'
             ORDER BY 1) AS executors
FROM pg_proc AS p
WHERE p.pronamespace = 'ganpool'::regnamespace AND p.prokind IN ('f', 'p')
ORDER BY 1;

-- schema_grants --
-- Who may use (or create in) the schema itself.
SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END AS grantee,
       string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type) AS privileges
FROM pg_namespace AS n, aclexplode(n.nspacl) AS a
WHERE n.nspname = 'ganpool' AND a.grantee <> n.nspowner
GROUP BY 1 ORDER BY 1;
