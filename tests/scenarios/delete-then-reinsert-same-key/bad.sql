DELETE FROM t WHERE id IN (3, 4);
INSERT INTO t VALUES (3, 'again', 30), (4, 'v4', 40);
