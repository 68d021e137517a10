-- A delivery belongs to the namespace of its subscription, not to its event's: a namespace's
-- readers must not see (nor its operators retry) the deliveries of an admin's global
-- subscriptions, whose webhook URLs are often secrets of their own, or of the configured
-- notify.email addresses. Those get no namespace, and only admins see them; the event keeps
-- its namespace. A delivery whose subscription was deleted since takes the namespace its
-- subscription was created in, as the audit log recorded it (NULL for a global one); without
-- that record it stays with the admins.
UPDATE deliveries SET namespace = CASE
    WHEN subscription_id IS NULL THEN NULL
    WHEN EXISTS (SELECT 1 FROM subscriptions WHERE subscriptions.id = deliveries.subscription_id)
        THEN (SELECT subscriptions.namespace FROM subscriptions
              WHERE subscriptions.id = deliveries.subscription_id)
    ELSE (SELECT audit_events.namespace FROM audit_events
          WHERE audit_events.target = deliveries.subscription_id
            AND audit_events.action IN ('webhook.create', 'email_subscription.create')
          ORDER BY audit_events.id LIMIT 1)
END;
